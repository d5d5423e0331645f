# mkImages: the flake-parts module's outputs for flakes without flake-parts. Builtins only.
#
#   outputs = { self, nixpkgs, strata }: strata.lib.mkImages {
#     inherit nixpkgs;
#     systems = [ "x86_64-linux" ];
#     images.hello = { imagePkgs, ... }: { imageConfig.entrypoint = [ "${imagePkgs.hello}/bin/hello" ]; };
#   };
#
# gives `strata.<system>.images.<name>.{result,do.run.*,do.copy.*}` and
# `checks.<system>.strata-image-<name>`. An image is an attrset of options, or a function of
# { name, system, pkgs, imageSystem, imagePkgs, ... } returning one (no module merging: use
# the flake-parts module for that).
{ strataFor, library, defaultSystems }:
{ images
, nixpkgs ? null
, systems ? defaultSystems
, pkgsFor ? system: if nixpkgs == null then throw "strata.mkImages: an image asks for pkgs or imagePkgs: pass `nixpkgs` (or `pkgsFor`)" else nixpkgs.legacyPackages.${system}
, strata ? null  # system -> the strata package to build with; default: this flake's own
, namespace ? "strata"
, checks ? true  # add every image (with check = true) to `checks`
}:
let
  inherit (builtins) attrNames filter head isFunction listToAttrs map;
  forSystems = f: listToAttrs (map (system: { name = system; value = f system; }) systems);

  imagesFor = system:
    let
      lib = library { strata = if strata == null then strataFor system else strata system; inherit system; };
      imageSystem = lib.imageSystemOf system;
      args = name: { inherit name system imageSystem; pkgs = pkgsFor system; imagePkgs = pkgsFor imageSystem; };
      # An image with `systems` is made for each (its function called with each system's
      # imageSystem and imagePkgs) and joined in an image index: `result` stays the host's
      # platform's image, `do.copy.toRegistry`/`to` write the index, `index` is it, and the
      # check builds every platform.
      image = name: entry:
        let
          setFor = argsOf: if isFunction entry then entry argsOf else entry;
          set = setFor (args name);
          unknown = filter (k: !(lib.imageOptions ? ${k})) (attrNames set);
          one = lib.mkImage ({ inherit name imageSystem; } // removeAttrs set [ "systems" ]);
          forSystem = s: lib.mkImage ({ inherit name; imageSystem = s; } // removeAttrs (setFor (args name // { imageSystem = s; imagePkgs = pkgsFor s; })) [ "systems" ]);
          multi =
            let
              built = map forSystem set.systems;
              index = lib.buildImageIndex { inherit name; tag = set.tag or null; images = map (b: b.result) built; };
              host = if builtins.elem imageSystem set.systems then forSystem imageSystem else head built;
            in
            host // { inherit index; do = host.do // { copy = host.do.copy // { toRegistry = index.copyToRegistry; to = index.copyTo; }; }; };
        in
        if unknown != [ ] then throw "strata.mkImages: image `${name}` has no option `${head unknown}`"
        else if (set.systems or null) == null then { check = set.check or true; built = one; checked = one.result; }
        else { check = set.check or true; built = multi; checked = multi.index; };
    in
    builtins.mapAttrs image images;

  perSystem = forSystems imagesFor;
in
{
  ${namespace} = builtins.mapAttrs (_: imgs: { images = builtins.mapAttrs (_: i: i.built) imgs; }) perSystem;
} // (if checks then {
  checks = builtins.mapAttrs
    (_: imgs: listToAttrs (map (n: { name = "${namespace}-image-${n}"; value = imgs.${n}.checked; }) (filter (n: imgs.${n}.check) (attrNames imgs))))
    perSystem;
} else { })
