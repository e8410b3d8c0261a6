//! ipnix-bridge
