"""`tote doctor`: checks of a live install (checks.py) and the command around them."""
