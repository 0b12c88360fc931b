"""The network side of the controller: control connections over unix sockets or TCP with TLS,
and the certificates that TLS needs (`tzero certs`)."""
