# The images of the flake integration (the flake-parts module in flake-module.nix and
# mkImages in mk-images.nix): an image's options, as plain values, to what a flake exposes
# for it. Builtins only. The image itself is a nix2container-style description (no tarball
# in the store); its actions are small executables that call strata.
{ describeImage, buildLayer }:
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
    else if isAttrs l && !(l ? outPath) then buildLayer l
    else buildLayer { deps = [ l ]; };
  # Every option of an image, declared once: the flake module makes its options of these
  # (`type` is a function of nixpkgs' `lib.types`), mkImages and mkImage check arguments
  # against them and take their defaults. `name` defaults to the image's attribute name.
  imageOptions = {
    name = { type = t: t.str; description = "The image's name (repository)."; };
    tag = { type = t: t.nullOr t.str; default = null; description = "The tag; default: a hash of the image's description."; };
    imageConfig = { type = null; default = { }; description = "The OCI image config."; };
    copyToRoot = { type = t: t.listOf (t.either t.package t.str); default = [ ]; description = "Trees laid over / (their closures go in the store)."; };
    layers = { type = t: t.listOf t.raw; default = [ ]; description = "Isolated layers: buildLayer results, their arguments ({ deps, copyToRoot }), or derivations."; };
    maxLayers = { type = t: t.ints.between 1 125; default = 100; description = "The layer budget, base and explicit layers included."; };
    perms = { type = t: t.listOf (t.attrsOf t.anything); default = [ ]; description = "{ path, regex?, mode?, uid?, gid?, uname?, gname? } as in nix2container: regex searched in the store paths of the files of path."; };
    fromImage = { type = t: t.nullOr (t.either t.str t.package); default = null; description = "A base image: a docker-archive, or a reference (docker://…, oci:…)."; };
    initializeNixDatabase = { type = t: t.bool; default = false; description = "Whether the image holds a Nix database of its store paths."; };
    check = { type = t: t.bool; default = true; description = "Whether `nix flake check` builds this image."; };
    systems = { type = t: t.nullOr (t.listOf t.str); default = null; description = "Linux systems to make the image for, as one multi-platform image (an OCI image index); default: the host's alone."; };
  };

  # The options of `imageConfig`, likewise.
  imageConfigOptions = {
    entrypoint = { type = t: t.nullOr (t.listOf t.str); default = null; description = "The entrypoint."; };
    cmd = { type = t: t.nullOr (t.listOf t.str); default = null; description = "The command."; };
    env = { type = t: t.nullOr (t.either (t.listOf t.str) (t.attrsOf t.str)); default = null; description = "K=V strings, or an attrset of variables."; };
    workingDir = { type = t: t.nullOr t.str; default = null; description = "The working directory."; };
    user = { type = t: t.nullOr t.str; default = null; description = "The user."; };
    exposedPorts = { type = t: t.nullOr (t.either (t.listOf t.str) (t.attrsOf t.attrs)); default = null; description = ''Ports such as "8080/tcp".''; };
    labels = { type = t: t.nullOr (t.attrsOf t.str); default = null; description = "Labels."; };
    raw = { type = t: t.attrsOf t.anything; default = { }; description = "Any OCI config key (Docker's or nix2container's spelling); the options above win over it."; };
  };

  defaultsOf = options: builtins.mapAttrs (_: o: o.default) (removeAttrs options (filter (k: !(options.${k} ? default)) (attrNames options)));
in
{
  inherit imageOptions imageConfigOptions;

  # The Linux system an image for `system` is built for: aarch64-darwin -> aarch64-linux.
  imageSystemOf = system:
    let parts = builtins.match "(.*)-darwin" system;
    in if parts == null then system else "${builtins.head parts}-linux";

  # An image from its options (`imageOptions`; `check` is read by the callers) and the Linux
  # system it is built for.
  mkImage = args@{ name, imageSystem, ... }:
    let
      unknownArgs = filter (k: !(imageOptions ? ${k}) && k != "imageSystem" && k != "systems") (attrNames args);
      o = if unknownArgs == [ ] then defaultsOf imageOptions // args
        else throw "strata: image `${name}` has no option `${builtins.head unknownArgs}`";
      inherit (o) tag copyToRoot maxLayers perms fromImage initializeNixDatabase;
      known = attrNames imageConfigOptions;
      unknown = filter (k: !builtins.elem k known) (attrNames o.imageConfig);
      c = if unknown == [ ] then o.imageConfig
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
      result = describeImage {
        inherit name tag config copyToRoot maxLayers perms fromImage initializeNixDatabase;
        layers = map layerOf o.layers;
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
