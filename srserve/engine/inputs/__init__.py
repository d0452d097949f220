"""A request's conditioning inputs from a client: the image, the video and mask of an edit, checked before
they are decoded."""
