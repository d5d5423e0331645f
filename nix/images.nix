# The images of the flake integration (the flake-parts module in flake-module.nix and
# mkImages in mk-images.nix): an image's options, as plain values, to what a flake exposes
# for it. Builtins only. The image itself is a nix2container-style description (no tarball
# in the store); its actions are small executables that call strata.
{ nix2container }:
let
  inherit (builtins) attrNames filter isAttrs isList listToAttrs map;

  # The OCI architecture of a Linux system; null (the host's) for others.
  goArch = system: { x86_64-linux = "amd64"; aarch64-linux = "arm64"; i686-linux = "386"; armv7l-linux = "arm"; riscv64-linux = "riscv64"; }.${system} or null;

  # Env as a list of K=V, or an attrset of variables.
  envList = env: if isAttrs env then map (k: "${k}=${toString env.${k}}") (attrNames env) else env;
  # ExposedPorts as a list ("8080/tcp") or OCI's set of empty objects.
  portSet = ports: if isList ports then listToAttrs (map (p: { name = p; value = { }; }) ports) else ports;

  withoutNulls = set: removeAttrs set (filter (k: set.${k} == null) (attrNames set));

  # An entry of `layers`: a buildLayer result, its arguments, or a derivation (its closure).
  layerOf = l:
    if isAttrs l && l._strataLayer or false then l
    else if isAttrs l && !(l ? outPath) then nix2container.buildLayer l
    else nix2container.buildLayer { deps = [ l ]; };
in
{
  # The Linux system an image for `system` is built for: aarch64-darwin -> aarch64-linux.
  imageSystemOf = system:
    let parts = builtins.match "(.*)-darwin" system;
    in if parts == null then system else "${builtins.head parts}-linux";

  mkImage =
    { name, imageSystem, tag ? null, imageConfig ? { }, copyToRoot ? [ ], layers ? [ ], maxLayers ? 100
    , perms ? [ ], fromImage ? null, initializeNixDatabase ? false
    , check ? true  # read by the callers (`checks`); accepted here so every image option is an argument
    }:
    let
      known = [ "entrypoint" "cmd" "env" "workingDir" "user" "exposedPorts" "labels" "raw" ];
      unknown = filter (k: !builtins.elem k known) (attrNames imageConfig);
      c = if unknown == [ ] then imageConfig
        else throw "strata: image `${name}`: imageConfig has no option `${builtins.head unknown}` (options: ${builtins.concatStringsSep ", " known}; any OCI config key goes in `raw`)";
      # `raw` holds any OCI config key; the typed options, where set, win over it.
      config = (c.raw or { }) // withoutNulls {
        entrypoint = c.entrypoint or null;
        cmd = c.cmd or null;
        env = if c.env or null == null then null else envList c.env;
        workingDir = c.workingDir or null;
        user = c.user or null;
        exposedPorts = if c.exposedPorts or null == null then null else portSet c.exposedPorts;
        labels = c.labels or null;
      };
      result = nix2container.buildImage {
        inherit name tag config copyToRoot maxLayers perms fromImage initializeNixDatabase;
        layers = map layerOf layers;
        arch = goArch imageSystem;
      };
    in
    {
      inherit name result;
      do.copy = {
        toDockerDaemon = result.copyToDockerDaemon;
        toPodman = result.copyToPodman;
        toRegistry = result.copyToRegistry;
        to = result.copyTo;
      };
      do.run = {
        interactivelyInDocker = result.runInDocker;
        interactivelyWithPodman = result.runWithPodman;
      };
    };
}
