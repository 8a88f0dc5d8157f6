"""The example's only model."""

from __future__ import annotations

from django.db import models


class Item(models.Model):
    """A catalogue item, read by the example's views."""

    name = models.CharField(max_length=100)

    class Meta:
        app_label = "django_items"
