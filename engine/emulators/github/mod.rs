//! Emulated GitHub REST API (the subset tkgops uses) backed by a local bare git repository.
