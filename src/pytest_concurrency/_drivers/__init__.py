"""Protocol drivers: each turns one request into one response and reports its timings."""
