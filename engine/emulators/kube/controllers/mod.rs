//! Simulated controllers that drive object status on the emulated clusters as the real ones do:
//! Cluster API, kapp-controller and the TMC cluster agent.
