"""The one definition of every storm parameter and budget (``table``), the values they take
(``values``), how a budget reads its figure (``measures``) and which combine (``rules``)."""
