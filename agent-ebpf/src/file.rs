//! Records of the file sensor (opens).
