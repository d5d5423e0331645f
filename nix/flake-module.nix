# The flake-parts module: images declared per system, built by strata.
#
#   imports = [ strata.flakeModules.default ];
#   perSystem.strata.images.basic = { imageSystem, imagePkgs, ... }: {
#     imageConfig.entrypoint = [ "${imagePkgs.hello}/bin/hello" ];
#   };
#
# gives `strata.<system>.images.basic.result` (the image's description), its actions
# `…do.run.interactivelyInDocker` / `…interactivelyWithPodman` and `…do.copy.{toDockerDaemon,
# toPodman,toRegistry,to}`, and the check `strata-image-basic`.
#
# This file is a function of the namespace (`strata`; `n2c` serves flakes written for
# n2c-mod) and of the default strata package per system: the module system cannot name an
# option after another option's value, so the namespace is chosen when the module is made
# (`strata.lib.flakeModule { namespace = "n2c"; }`, or `strata.flakeModules.n2c`).
# It never reads `inputs'`, which Nix before 2.13 cannot give flake-parts.
{ namespace ? "strata", defaultPackage, library }:
{ lib, flake-parts-lib, inputs, ... }:
let
  inherit (lib) mkOption types;

  # One image's options; `result` and `do` are computed from them.
  imageModule = { name, config, strataLib, imageSystem, ... }: {
    options = {
      name = mkOption { type = types.str; default = name; description = "The image's name (repository)."; };
      tag = mkOption { type = types.nullOr types.str; default = null; description = "The tag; default: a hash of the image's description."; };
      imageConfig = mkOption {
        description = "The OCI image config.";
        default = { };
        type = types.submodule {
          options = {
            entrypoint = mkOption { type = types.nullOr (types.listOf types.str); default = null; };
            cmd = mkOption { type = types.nullOr (types.listOf types.str); default = null; };
            env = mkOption { type = types.nullOr (types.either (types.listOf types.str) (types.attrsOf types.str)); default = null; description = "K=V strings, or an attrset of variables."; };
            workingDir = mkOption { type = types.nullOr types.str; default = null; };
            user = mkOption { type = types.nullOr types.str; default = null; };
            exposedPorts = mkOption { type = types.nullOr (types.either (types.listOf types.str) (types.attrsOf types.attrs)); default = null; description = ''Ports such as "8080/tcp".''; };
            labels = mkOption { type = types.nullOr (types.attrsOf types.str); default = null; };
            raw = mkOption { type = types.attrsOf types.anything; default = { }; description = "Any OCI config key (Docker's or nix2container's spelling); the options above win over it."; };
          };
        };
      };
      copyToRoot = mkOption { type = types.listOf (types.either types.package types.str); default = [ ]; description = "Trees laid over / (their closures go in the store)."; };
      layers = mkOption { type = types.listOf types.raw; default = [ ]; description = "Isolated layers: buildLayer results, their arguments ({ deps, copyToRoot }), or derivations."; };
      maxLayers = mkOption { type = types.ints.between 1 125; default = 100; };
      perms = mkOption { type = types.listOf (types.attrsOf types.anything); default = [ ]; description = "{ path, regex?, mode?, uid?, gid? } as in nix2container."; };
      fromImage = mkOption { type = types.nullOr (types.either types.str types.package); default = null; description = "A base image: a docker-archive, or a reference (docker://…, oci:…)."; };
      initializeNixDatabase = mkOption { type = types.bool; default = false; };
      check = mkOption { type = types.bool; default = true; description = "Whether `nix flake check` builds this image."; };
      result = mkOption { type = types.package; readOnly = true; description = "The image: its description, with the digests strata computed."; };
      do = mkOption { type = types.lazyAttrsOf (types.lazyAttrsOf types.package); readOnly = true; description = "Runnable actions: do.run.*, do.copy.*."; };
    };
    config =
      let
        built = strataLib.mkImage {
          inherit imageSystem;
          inherit (config) name tag copyToRoot layers maxLayers perms fromImage initializeNixDatabase;
          imageConfig = removeAttrs config.imageConfig [ "_module" ];
        };
      in
      { inherit (built) result do; };
  };
in
{
  options.perSystem = flake-parts-lib.mkPerSystemOption ({ config, pkgs, system, ... }:
    let
      cfg = config.${namespace};
      strataLib = library { strata = cfg.package; inherit system; };
      imageSystem = strataLib.imageSystemOf system;
    in
    {
      options.${namespace} = {
        package = mkOption {
          type = types.package;
          default = defaultPackage system;
          defaultText = "strata's own build";
          description = "The strata the images are built with.";
        };
        imagePkgs = mkOption {
          type = types.raw;
          default =
            if imageSystem == system then pkgs
            else inputs.nixpkgs.legacyPackages.${imageSystem} or (throw "${namespace}.imagePkgs: no nixpkgs input to take ${imageSystem} packages from: set it");
          defaultText = "pkgs, or nixpkgs' packages for the Linux system of a Darwin host";
          description = "The package set images are made of (imagePkgs in image modules).";
        };
        check.images = mkOption { type = types.bool; default = true; description = "Whether `nix flake check` builds the images (each image's `check` also counts)."; };
        images = mkOption {
          description = "Images, by name: modules (or functions of { imageSystem, imagePkgs, system, pkgs, ... }).";
          default = { };
          type = types.lazyAttrsOf (types.submoduleWith {
            modules = [
              imageModule
              { _module.args = { inherit imageSystem system pkgs strataLib; imagePkgs = cfg.imagePkgs; }; }
            ];
          });
        };
      };
      config.checks = lib.mkIf cfg.check.images (lib.mapAttrs' (name: image: lib.nameValuePair "${namespace}-image-${name}" image.result)
        (lib.filterAttrs (_: image: image.check) cfg.images));
    });

  config.transposition.${namespace} = { };
}
