"""Front doors: the transports downstream clients connect with."""
