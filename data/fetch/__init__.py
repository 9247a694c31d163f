"""URLs into images: the HTTP transport, a URL list into image files, and the one pass into records."""
