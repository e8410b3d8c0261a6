# ipnix as a Nix package. Needs nixpkgs (not available offline in CI, so this
# expression is not built by the test suite):
#   nix-build -E 'with import <nixpkgs> {}; callPackage ./nix/package.nix {}'
{ lib, rustPlatform }:

rustPlatform.buildRustPackage {
  pname = "ipnix";
  version = "0.1.0";
  src = lib.cleanSource ../.;
  cargoLock.lockFile = ../Cargo.lock;
  cargoBuildFlags = [ "-p" "ipnix-node" "--bin" "ipnix" ];
  # The suite needs Kubo, Helia and a writable Nix store: run it with tests/run.sh.
  doCheck = false;
  meta = {
    description = "IPFS peer with a native Nix store bridge and binary cache";
    license = with lib.licenses; [ mit asl20 ];
    mainProgram = "ipnix";
  };
}
