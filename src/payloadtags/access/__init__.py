"""Registry access control: who may see or change which repository paths."""
