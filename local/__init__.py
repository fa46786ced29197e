"""Local development stack pieces; none of this is deployed."""
