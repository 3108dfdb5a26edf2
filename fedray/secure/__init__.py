"""Secure aggregation: what sites and the controller run so that the controller never holds a plain site update."""
