//! Records of the network sensor (connect, listen, accept).
