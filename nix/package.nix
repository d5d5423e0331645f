# strata built from this repository with nixpkgs' Rust tooling.
#
# The version is the workspace's (Cargo.toml), so it is written in one place. `src` holds only
# what Cargo reads (the manifests, the lock file and crates/), so an edit to the README, the Nix
# library or the benchmarks does not rebuild strata. It is selected with `builtins.path` rather
# than `lib.fileset` so that it evaluates with builtins alone, as the rest of the library does.
{ lib, rustPlatform }:
let
  root = ../.;
  workspace = builtins.fromTOML (builtins.readFile (root + "/Cargo.toml"));
  # Paths relative to the repository that Cargo needs; a directory is taken whole.
  kept = [ "Cargo.toml" "Cargo.lock" "rustfmt.toml" "crates" ];
  prefix = "${toString root}/";
  relativeOf = path: builtins.substring (builtins.stringLength prefix) (-1) (toString path);
  isKept = relative: builtins.any (k: relative == k || builtins.substring 0 (builtins.stringLength k + 1) relative == "${k}/") kept;
in
rustPlatform.buildRustPackage {
  pname = "strata";
  inherit (workspace.workspace.package) version;
  src = builtins.path {
    name = "strata-source";
    path = root;
    filter = path: _type: isKept (relativeOf path);
  };
  cargoLock.lockFile = root + "/Cargo.lock";
  cargoBuildFlags = [ "--package" "strata-cli" ];
  # The library crates' tests run here: they need no daemon, registry or Nix. The end-to-end
  # tests (strata-cli's) need podman, the Docker engine, a registry and Nix: scripts/test runs them.
  doCheck = true;
  cargoTestFlags = [ "--workspace" "--exclude" "strata-cli" ];
  meta = {
    description = "Nix closures to layered, reproducible OCI and Docker images";
    license = with lib.licenses; [ mit asl20 ];
    mainProgram = "strata";
  };
}
