//! Launcher for moto's EC2 server on loopback (used by the sandbox and the tests).
