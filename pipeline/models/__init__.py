"""Model builders (Keras) and their weight readers."""
