//! Records of the syscall sensor (first use of a syscall by a cgroup).
