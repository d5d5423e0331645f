# strata built from this repository with nixpkgs' Rust tooling.
{ lib, rustPlatform, src }:
rustPlatform.buildRustPackage {
  pname = "strata";
  version = "0.1.0";
  inherit src;
  cargoLock.lockFile = "${src}/Cargo.lock";
  cargoBuildFlags = [ "--package" "strata-cli" ];
  # The tests need podman, the Docker engine, a registry and Nix itself: scripts/test runs them.
  doCheck = false;
  meta = {
    description = "Nix closures to layered, reproducible OCI and Docker images";
    license = with lib.licenses; [ mit asl20 ];
    mainProgram = "strata";
  };
}
