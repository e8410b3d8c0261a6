//! ipnix-node
