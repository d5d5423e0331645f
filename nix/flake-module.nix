# The flake-parts module: images declared per system, built by strata.
#
#   imports = [ strata.flakeModules.default ];
#   perSystem.strata.images.basic = { imageSystem, imagePkgs, ... }: {
#     imageConfig.entrypoint = [ "${imagePkgs.hello}/bin/hello" ];
#   };
#
# gives `strata.<system>.images.basic.result` (the image's description), its actions
# `…do.run.interactivelyInDocker` / `…interactivelyWithPodman` and `…do.copy.{toDockerDaemon,
# toPodman,toRegistry,to}`, and the check `strata-image-basic`. An image with `systems = [ … ]`
# is made for each Linux system (its module evaluated again with that system's imageSystem and
# imagePkgs) and joined in `index`, which `do.copy.to`/`toRegistry` write and the check builds.
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

  # One image's options, made of the library's one declaration of them (nix/images.nix);
  # `result` and `do` are computed from them.
  declared = import ./images.nix { describeImage = null; buildLayer = null; }; # only the declarations are read
  optionOf = o: mkOption ({ type = o.type types; inherit (o) description; } // (if o ? default then { inherit (o) default; } else { }));
  imageModule = { name, config, strataLib, imageSystem, strataIndexFor, ... }: {
    options = builtins.mapAttrs (_: optionOf) declared.imageOptions // {
      name = optionOf declared.imageOptions.name // { default = name; };
      imageConfig = mkOption {
        inherit (declared.imageOptions.imageConfig) description default;
        type = types.submodule { options = builtins.mapAttrs (_: optionOf) declared.imageConfigOptions; };
      };
      result = mkOption { type = types.package; readOnly = true; description = "The image (the host platform's, with `systems`): its description, with the digests strata computed."; };
      index = mkOption { type = types.nullOr types.package; readOnly = true; description = "With `systems`: the image index of every system's image (buildImageIndex)."; };
      do = mkOption { type = types.lazyAttrsOf (types.lazyAttrsOf types.package); readOnly = true; description = "Runnable actions: do.run.*, do.copy.* (with `systems`, copy.to and copy.toRegistry write the index)."; };
    };
    config =
      let
        built = strataLib.mkImage {
          inherit imageSystem;
          inherit (config) name tag copyToRoot layers maxLayers perms fromImage initializeNixDatabase;
          imageConfig = removeAttrs config.imageConfig [ "_module" ];
        };
        # With `systems`, every system's image (this image's definitions evaluated again with
        # that system's imageSystem and imagePkgs), joined in an index.
        index = if config.systems == null then null else strataIndexFor name config;
      in
      {
        inherit (built) result;
        inherit index;
        do = if index == null then built.do
          else built.do // { copy = built.do.copy // { toRegistry = index.copyToRegistry; to = index.copyTo; }; };
      };
  };
in
{
  options.perSystem = flake-parts-lib.mkPerSystemOption ({ config, options, pkgs, system, ... }:
    let
      cfg = config.${namespace};
      strataLib = library { strata = cfg.package; inherit system pkgs; };
      imageSystem = strataLib.imageSystemOf system;
      imagePkgsFor = s: if s == imageSystem then cfg.imagePkgs
        else inputs.nixpkgs.legacyPackages.${s} or (throw "${namespace}.images: no nixpkgs input to take ${s} packages from");
      # The image `name` for Linux system `s`: its definitions (as written in perSystem)
      # evaluated again with that system's arguments.
      imageFor = name: s: (lib.evalModules {
        specialArgs = { inherit name; };
        modules = [
          imageModule
          { _module.args = { inherit system pkgs strataLib; imageSystem = s; imagePkgs = imagePkgsFor s; strataIndexFor = _: _: null; }; }
        ] ++ builtins.concatMap (d: if builtins.isAttrs d.value && d.value ? ${name} then [{ _file = d.file; imports = [ d.value.${name} ]; }] else [ ])
          options.${namespace}.images.definitionsWithLocations;
      }).config;
      strataIndexFor = name: image: strataLib.buildImageIndex {
        inherit (image) name tag;
        images = map (s: (imageFor name s).result) image.systems;
      };
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
              { _module.args = { inherit imageSystem system pkgs strataLib strataIndexFor; imagePkgs = cfg.imagePkgs; }; }
            ];
          });
        };
      };
      config.checks = lib.mkIf cfg.check.images (lib.mapAttrs' (name: image: lib.nameValuePair "${namespace}-image-${name}" (if image.index != null then image.index else image.result))
        (lib.filterAttrs (_: image: image.check) cfg.images));
    });

  config.transposition.${namespace} = { };
}
