# strata's Nix library. It needs only `builtins`, so it works with any nixpkgs, or none:
#
#   lib = import ./nix { strata = <a derivation with bin/strata; a store path string outside pure evaluation>; };
#
# Every image is two small derivations whose builder is strata itself (no shell, coreutils
# or Python in the build): a spec file, whose closure is the closure of everything the image
# names, and the image, built from that spec and the closure graph Nix exports to it.
#
# `pkgs` (the caller's nixpkgs) is needed only by the arguments that run a shell, as
# dockerTools' do (`extraCommands`); with none, they are an evaluation error saying so.
{ strata, system ? strata.system or builtins.currentSystem, storeDir ? builtins.storeDir, pkgs ? null }:
let
  strataBin = "${strata}/bin/strata";
  defaultCreated = "1970-01-01T00:00:01Z";

  toList = x: if x == null then [ ] else if builtins.isList x then x else [ x ];

  # Derivations and store paths only, else an evaluation error naming the argument.
  storePaths = fn: arg: xs: map
    (x:
      if builtins.isAttrs x && x ? outPath then toString x
      else if builtins.isPath x then "${x}"
      else if builtins.isString x && builtins.substring 0 (builtins.stringLength storeDir + 1) x == "${storeDir}/" then x
      else throw "strata.${fn}: `${arg}` must hold derivations or store paths, not a ${builtins.typeOf x}")
    (toList xs);

  oneOf = fn: arg: allowed: value:
    if builtins.elem value allowed then value
    else throw "strata.${fn}: `${arg}` must be one of ${builtins.concatStringsSep ", " allowed}, not ${toString value}";

  # Every path whose first component is not `nix`: what copyToRoot lays over /. (The regex
  # crate has no look-ahead, hence the spelled-out alternatives.)
  outsideNix = "/(?:[^n/][^/]*|n(?:[^i/][^/]*)?|ni(?:[^x/][^/]*)?|nix[^/]+)(?:/.*)?";

  # A derivation name of an image name: its last path component (`ghcr.io/org/app` is
  # `app`), as dockerTools does: a `/` or `:` cannot be in one.
  drvNameOf = name: builtins.replaceStrings [ ":" "@" ] [ "-" "-" ] (baseNameOf name);

  specFile = name: spec: derivation {
    name = "${drvNameOf name}-spec.json";
    inherit system;
    builder = strataBin;
    args = [ "nix-builder" ];
    strataMode = "spec";
    strataSpecJson = builtins.toJSON spec;
  };

  # The default tag is the hash of the spec file's store path, which covers the spec and
  # every store path it names. (dockerTools uses the output's hash; that one changes when Nix
  # builds without a sandbox and rewrites the output path, which it cannot do inside gzip.)
  image = { drvName, mode, spec, extra ? { } }:
    let
      file = specFile spec.name spec;
      tag = if spec.tag != null then spec.tag else builtins.substring 0 32 (baseNameOf (toString file));
    in
    derivation ({
      name = drvName;
      inherit system;
      builder = strataBin;
      args = [ "nix-builder" ];
      strataMode = mode;
      strataSpec = file;
      strataTag = tag;
      exportReferencesGraph = [ "closure" file ];
    } // extra) // { inherit spec; imageName = spec.name; imageTag = tag; };

  # The spec strata reads (see the README), from the library's arguments. `fromImage` is a
  # docker-archive (a path or derivation) or any strata source reference ("oci:…", "docker://…").
  mkSpec = fn: { name, tag ? null, config ? { }, roots ? [ ], copyToRoot ? [ ], linkToRoot ? [ ], modesFiles ? [ ], maxLayers ? 100
               , created ? defaultCreated, mtime ? null, fromImage ? null, perms ? [ ], layers ? [ ]
               , initializeNixDatabase ? false, architecture ? null }: {
    inherit name tag created mtime perms config layers architecture;
    initialize_nix_database = initializeNixDatabase;
    max_layers = maxLayers;
    roots = storePaths fn "contents" roots;
    copy_to_root = storePaths fn "copyToRoot" copyToRoot;
    link_to_root = storePaths fn "contents" linkToRoot;
    modes_files = modesFiles;
    from_image =
      if fromImage == null then null
      else if builtins.isString fromImage && builtins.match "[a-z-]+:.*" fromImage != null then fromImage
      else "docker-archive:${toString fromImage}";
  };

  # nix2container writes config keys in lower camel case; strata's spec has Docker's names.
  dockerKey = { entrypoint = "Entrypoint"; cmd = "Cmd"; env = "Env"; workingDir = "WorkingDir"; user = "User";
                exposedPorts = "ExposedPorts"; volumes = "Volumes"; labels = "Labels"; stopSignal = "StopSignal"; };
  dockerConfig = config: builtins.listToAttrs (map (k: { name = dockerKey.${k} or k; value = config.${k}; }) (builtins.attrNames config));

  # A layer made with buildLayer, else an evaluation error naming the argument.
  layerOf = fn: l: if builtins.isAttrs l && l._strataLayer or false then l
    else throw "strata.${fn}: `layers` must hold layers made with buildLayer, not a ${builtins.typeOf l}";


  # A runnable derivation: `$out/bin/<name>` runs `strata <command> "$@"`.
  runner = name: command: derivation {
    inherit name system;
    builder = strataBin;
    args = [ "nix-builder" ];
    strataMode = "executable";
    strataPath = "bin/${name}";
    strataText = "#!/bin/sh\nexec ${strataBin} ${command} \"$@\"\n";
  } // { meta.mainProgram = name; };

  # The OCI architecture of the system strata builds on.
  hostArch = { x86_64-linux = "amd64"; aarch64-linux = "arm64"; i686-linux = "386"; riscv64-linux = "riscv64"; }.${system} or "amd64";

  suffix = compressor: { gz = ".tar.gz"; zstd = ".tar.zst"; none = ".tar"; }.${compressor};

  # dockerTools' image names are lower case (`lib.toLower name`); with builtins only.
  toLower = builtins.replaceStrings
    [ "A" "B" "C" "D" "E" "F" "G" "H" "I" "J" "K" "L" "M" "N" "O" "P" "Q" "R" "S" "T" "U" "V" "W" "X" "Y" "Z" ]
    [ "a" "b" "c" "d" "e" "f" "g" "h" "i" "j" "k" "l" "m" "n" "o" "p" "q" "r" "s" "t" "u" "v" "w" "x" "y" "z" ];
  # dockerTools' `config` may be null (its default).
  configOf = config: if config == null then { } else config;

  # dockerTools' `extraCommands`: shell commands run in the directory laid over / (in a
  # final layer), with the caller's nixpkgs' shell and coreutils. Modes are recorded before
  # the store makes every file read-only (`chmod 1777 tmp` holds), and given back by strata.
  # { copyToRoot, modesFiles } to add to a spec; nothing without commands.
  customisation = fn: extraCommands:
    if extraCommands == "" then { copyToRoot = [ ]; modesFiles = [ ]; }
    else if pkgs == null then throw "strata.${fn}: `extraCommands` runs a shell: import strata's library with your nixpkgs (`pkgs = …`), as dockerTools takes it from its own"
    else
      let
        made = derivation {
          name = "extra-commands";
          inherit system;
          outputs = [ "out" "modes" ];
          builder = pkgs.runtimeShell;
          PATH = "${pkgs.coreutils}/bin:${pkgs.findutils}/bin";
          args = [ "-c" ''
            set -e
            mkdir -p "$out"
            cd "$out"
            ${extraCommands}
            find . -mindepth 1 -not -type l -printf '%m /%P\n' > "$modes"
          '' ];
        };
      in { copyToRoot = [ made.out ]; modesFiles = [ "${made.modes}" ]; };

  # dockerTools' owner of what is laid over / (uid, gid, uname, gname): a perm rule on every
  # path outside /nix, none for root.
  ownerPerms = { uid ? 0, gid ? 0, uname ? "root", gname ? "root" }:
    if uid == 0 && gid == 0 && uname == "root" && gname == "root" then [ ]
    else [ ({ regex = outsideNix; inherit uid gid; } // (if uname != "root" then { inherit uname; } else { }) // (if gname != "root" then { inherit gname; } else { })) ];

  # The spec of dockerTools' layered images (streamLayeredImage, buildLayeredImage), from
  # their arguments; an argument they do not take is an evaluation error naming it.
  layeredSpec = fn:
    { name, tag ? null, contents ? [ ], config ? null, maxLayers ? 100, created ? defaultCreated
    , mtime ? null, fromImage ? null, architecture ? null, includeNixDB ? false
    , uid ? 0, gid ? 0, uname ? "root", gname ? "root", meta ? { }, compressor ? "gz", layeringPipeline ? null
    , extraCommands ? "" }:
    let extra = customisation fn extraCommands; in
    if layeringPipeline != null
    then throw "strata.${fn}: `layeringPipeline` is not supported: strata splits the closure itself (maxLayers), and keeps layers across releases (strata build --previous)"
    else mkSpec fn {
      inherit tag maxLayers created mtime fromImage architecture;
      inherit (extra) copyToRoot modesFiles;
      name = toLower name;
      config = configOf config;
      linkToRoot = contents;
      initializeNixDatabase = includeNixDB;
      perms = ownerPerms { inherit uid gid uname gname; };
    };

  tarball = fn: { compressor ? "gz", ... }@args: spec: image {
    drvName = "docker-image-${drvNameOf spec.name}${suffix (oneOf fn "compressor" [ "gz" "zstd" "none" ] compressor)}";
    mode = "tarball";
    inherit spec;
    extra.strataCompressor = compressor;
  };
  # nixpkgs dockerTools.pullImage: an image from a registry, by digest, as a docker-archive in
  # the store (a fixed-output derivation: `sha256` or `hash` is the archive's), named
  # finalImageName:finalImageTag; usable as any image's `fromImage`. Fetched by strata itself,
  # with the layers as the registry holds them.
  fetchImage =
    { imageName, imageDigest, sha256 ? null, hash ? null, os ? "linux", arch ? null
    , finalImageName ? imageName, finalImageTag ? "latest", tlsVerify ? true, name ? null }:
    derivation {
      name = if name != null then name else "docker-image-${drvNameOf finalImageName}-${finalImageTag}.tar";
      inherit system;
      builder = strataBin;
      args = [ "nix-builder" ];
      strataMode = "pull";
      strataSource = "docker://${imageName}@${imageDigest}";
      strataDest = "${finalImageName}:${finalImageTag}";
      strataPlatform = "${os}/${if arch != null then arch else hostArch}";
      strataTlsVerify = if tlsVerify then "1" else "0";
      outputHashMode = "flat";
      outputHashAlgo = if hash != null then null else "sha256";
      outputHash = if hash != null then hash else if sha256 != null then sha256
        else throw "strata.pullImage: give `sha256` or `hash` (the docker-archive's)";
      impureEnvVars = [ "http_proxy" "https_proxy" "no_proxy" "HTTP_PROXY" "HTTPS_PROXY" "NO_PROXY" ];
    } // { inherit imageName imageDigest; imageTag = finalImageTag; };

in
rec {
  # nixpkgs dockerTools.buildImage: a compressed docker-archive in the store
  # (`docker load < result`), layered by strata within maxLayers.
  buildImage =
    { name, tag ? null, config ? null, copyToRoot ? [ ], fromImage ? null, created ? defaultCreated
    , uid ? 0, gid ? 0, compressor ? "gz", maxLayers ? 100, architecture ? null, includeNixDB ? false, meta ? { }
    , extraCommands ? "" }@args:
    let extra = customisation "buildImage" extraCommands; in
    tarball "buildImage" args (mkSpec "buildImage" {
      inherit tag fromImage created maxLayers architecture;
      copyToRoot = toList copyToRoot ++ extra.copyToRoot;
      inherit (extra) modesFiles;
      name = toLower name;
      config = configOf config;
      initializeNixDatabase = includeNixDB;
      perms = ownerPerms { inherit uid gid; };
    }) // { inherit meta; };

  # dockerTools.buildImageWithNixDb: buildImage with the Nix database of its store paths.
  buildImageWithNixDb = args: buildImage (args // { includeNixDB = true; });

  # nixpkgs dockerTools.streamLayeredImage: an executable that writes the image to stdout
  # (`$(nix-build) | docker load`); no image bytes in the store. `contents` are joined as
  # dockerTools joins them (symlinkJoin): each in the store with its closure, `/` holding
  # symlinks into it (/bin/sh -> /nix/store/…-bash/bin/sh).
  streamLayeredImage = { name, meta ? { }, ... }@args:
    image {
      drvName = "stream-${drvNameOf name}";
      mode = "stream";
      spec = layeredSpec "streamLayeredImage" args;
    } // { inherit meta; };

  # nixpkgs dockerTools.buildLayeredImage: the same image as a compressed docker-archive.
  buildLayeredImage = { meta ? { }, ... }@args:
    tarball "buildLayeredImage" args (layeredSpec "buildLayeredImage" args) // { inherit meta; };

  # dockerTools.buildLayeredImageWithNixDb: buildLayeredImage with the Nix database.
  buildLayeredImageWithNixDb = args: buildLayeredImage (args // { includeNixDB = true; });

  # nix2container-style images: the result is the image's description (spec, closure graph,
  # and the digests the image has, uncompressed and in `compressor`'s codec, computed at build
  # time), no tarball; runners copy it where it goes, naming blobs by the recorded digests
  # before reading anything, and strata checks it matches what was recorded.
  nix2container = rec {
    # An isolated layer, and its own derivation: the record of the layer's digests
    # (uncompressed and in `compressor`'s codec), made once and substitutable like any store
    # path; an image with this layer takes them from it. The layer holds the closure of
    # `deps` and the `copyToRoot` trees, minus what `layers` (earlier buildLayer layers) hold.
    buildLayer = { deps ? [ ], copyToRoot ? [ ], layers ? [ ], compressor ? "gz" }:
      let
        fn = "nix2container.buildLayer";
        own = { roots = storePaths fn "deps" deps; copy_to_root = storePaths fn "copyToRoot" copyToRoot; };
        below = builtins.concatLists (map (l: (layerOf fn l).strataChain) layers);
        chain = below ++ [ own ];
        record = image {
          drvName = "strata-layer.json";
          mode = "layer";
          spec = mkSpec fn { name = "layer"; layers = chain; maxLayers = builtins.length chain; };
          extra.strataCompressor = oneOf fn "compressor" [ "gz" "zstd" "none" ] compressor;
        };
      in
      record // { _strataLayer = true; strataChain = chain; strataPackages = toList deps ++ toList copyToRoot; inherit (own) roots copy_to_root; };

    # nix2container's pullImage: the same fetch; its result works as `fromImage`.
    pullImage = { imageName, imageDigest, sha256, arch ? null, tlsVerify ? true, os ? "linux" }:
      fetchImage { inherit imageName imageDigest sha256 arch tlsVerify os; };

    buildImage =
      { name, tag ? null, config ? { }, copyToRoot ? [ ], fromImage ? null, maxLayers ? 100, layers ? [ ]
      , perms ? [ ], created ? defaultCreated, initializeNixDatabase ? false, arch ? null, compressor ? "gz" }:
      let
        fn = "nix2container.buildImage";
        # nix2container's perms: `path` names a store path (in the image's store, or a tree
        # laid over /), and `regex` is searched in the store path of each of its files.
        perm = p: {
          store_path = toString p.path;
          regex = p.regex or "";
          mode = p.mode or null;
          uid = p.uid or null;
          gid = p.gid or null;
          uname = p.uname or null;
          gname = p.gname or null;
        };
        described = image {
          drvName = "image-${drvNameOf name}.json";
          mode = "description";
          extra = {
            strataCompressor = oneOf fn "compressor" [ "gz" "zstd" "none" ] compressor;
            strataLayerRecords = map (l: layerOf fn l) layers;
          };
          spec = mkSpec fn {
            inherit name tag copyToRoot fromImage maxLayers created initializeNixDatabase;
            architecture = arch;
            config = dockerConfig config;
            layers = map (l: { inherit (layerOf fn l) roots copy_to_root; }) layers;
            perms = map perm perms;
          };
        };
        ref = "${name}:${described.imageTag}";
        # The licences of the packages given (their meta; the store keeps none), by base name.
        given = copyToRoot ++ builtins.concatMap (l: (layerOf fn l).strataPackages or [ ]) layers;
        licenses = builtins.listToAttrs (builtins.concatMap
          (x:
            let license = if builtins.isAttrs x then x.meta.license or null else null;
              ids = map (l: l.spdxId or null) (if builtins.isList license then license else [ license ]);
            in if license == null || builtins.elem null ids then [ ] else [{ name = builtins.unsafeDiscardStringContext (baseNameOf (toString x)); value = builtins.concatStringsSep " AND " ids; }])
          (toList given));
        sbomOf = format: derivation {
          name = "${drvNameOf name}-sbom.${if format == "spdx" then "spdx" else "cdx"}.json";
          inherit system;
          builder = strataBin;
          args = [ "nix-builder" ];
          strataMode = "sbom";
          strataImage = described;
          strataSbomFormat = format;
          strataLicenses = builtins.toJSON licenses;
        };
      in
      described // {
        # The image's bill of materials, built by Nix: SPDX 2.3 (`sbom`) or CycloneDX 1.5.
        sbom = sbomOf "spdx";
        sbomCycloneDX = sbomOf "cyclonedx";
        copyToDockerDaemon = runner "copy-to-docker-daemon" "stream ${described} -o docker-daemon:${ref}";
        copyToPodman = runner "copy-to-podman" "stream ${described} -o podman:${ref}";
        copyToRegistry = runner "copy-to-registry" "stream ${described} -o docker://${ref}";
        copyTo = runner "copy-to" "stream ${described} -o";
        # Loaded and run (`-it` when standard input is a terminal); arguments go to the container.
        runInDocker = runner "run-in-docker" "run --engine docker ${described} --";
        runWithPodman = runner "run-with-podman" "run --engine podman ${described} --";
      };
  };
  inherit (nix2container) buildLayer;

  # nixpkgs dockerTools.pullImage (see fetchImage above).
  pullImage = fetchImage;

  # One image for several platforms: `images` are images of this library (descriptions,
  # stream scripts or tarballs), each for its own architecture (nix2container.buildImage's
  # `arch`, buildImage's via its spec), named `name` and tagged `tag` (default: the hash of the
  # index's file) as one. The result is the index's description, with the runners of
  # nix2container-style images: copyToRegistry and copyTo write an OCI image index;
  # copyToPodman and copyToDockerDaemon load the host's platform.
  buildImageIndex = { name, tag ? null, images }:
    let
      fn = "buildImageIndex";
      paths = storePaths fn "images" images;
      file = derivation {
        name = "image-index-${drvNameOf name}.json";
        inherit system;
        builder = strataBin;
        args = [ "nix-builder" ];
        strataMode = "spec";
        strataSpecJson = builtins.toJSON { strata_index = { inherit name tag; images = if paths == [ ] then throw "strata.${fn}: `images` is empty" else paths; }; };
      };
      imageTag = if tag != null then tag else builtins.substring 0 32 (baseNameOf (toString file));
      ref = "${name}:${imageTag}";
    in
    file // {
      inherit imageTag;
      imageName = name;
      copyToDockerDaemon = runner "copy-to-docker-daemon" "stream ${file} -o docker-daemon:${ref}";
      copyToPodman = runner "copy-to-podman" "stream ${file} -o podman:${ref}";
      copyToRegistry = runner "copy-to-registry" "stream ${file} -o docker://${ref}";
      copyTo = runner "copy-to" "stream ${file} -o";
    };

  # The flake integration's images (the flake-parts module, mkImages): image options as plain
  # values to { name, result, do.run.*, do.copy.* }. See images.nix.
  inherit (import ./images.nix { inherit nix2container; }) mkImage imageSystemOf imageOptions imageConfigOptions;

  # makes' makeContainerImage: each layer is a derivation whose $out is laid over /, its
  # closure in the image; a gzipped docker-archive (`docker load < result`).
  makeContainerImage = { layers ? [ ], maxLayers ? 65, config ? null }:
    tarball "makeContainerImage" { } (mkSpec "makeContainerImage" {
      name = "container-image";
      copyToRoot = storePaths "makeContainerImage" "layers" layers;
      config = if config == null then { } else config;
      inherit maxLayers;
    });
}
