"""karyotype subpackage."""
