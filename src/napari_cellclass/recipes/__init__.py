"""recipes subpackage."""
