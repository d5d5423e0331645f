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
#
# `imageSystem` is the system images are for by default (their architecture), when it is not
# the one they are built on (`system`): a cross package set's dockerTools.
{ strata, system ? strata.system or builtins.currentSystem, imageSystem ? system, storeDir ? builtins.storeDir, pkgs ? null }:
let
  strataBin = "${strata}/bin/strata";
  # A derivation strata builds (`strata nix-builder`, in `strataMode`).
  strataDerivation = attrs: derivation ({ inherit system; builder = strataBin; args = [ "nix-builder" ]; } // attrs);
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

  specFile = name: spec: strataDerivation {
    name = "${drvNameOf name}-spec.json";
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
    strataDerivation ({
      name = drvName;
      strataMode = mode;
      strataSpec = file;
      strataTag = tag;
      exportReferencesGraph = [ "closure" file ];
    } // extra) // { inherit spec; imageName = spec.name; imageTag = tag; };

  # The spec strata reads (see the README), from the library's arguments. `fromImage` is a
  # docker-archive (a path or derivation) or any strata source reference ("oci:…", "docker://…").
  mkSpec = fn: { name, tag ? null, config ? { }, roots ? [ ], copyToRoot ? [ ], linkToRoot ? [ ], modesFiles ? [ ], maxLayers ? 100
               , maxStoreLayers ? null, created ? defaultCreated, mtime ? null, fromImage ? null, perms ? [ ], layers ? [ ]
               , initializeNixDatabase ? false, nixUid ? null, nixGid ? null, architecture ? null, includeStorePaths ? true
               , keepContentsDirlinks ? false }: {
    inherit name tag created mtime perms config layers;
    # Default: the build machine's (strata's), or imageSystem's when the library has one.
    architecture = if architecture != null then architecture else if imageSystem == system then null else hostArch;
    initialize_nix_database = initializeNixDatabase;
    nix_uid = nixUid;
    nix_gid = nixGid;
    include_store_paths = includeStorePaths;
    # Nix found the config's references (in the spec file's closure): other store paths in it
    # are text, as dockerTools takes them.
    config_paths = "referenced";
    keep_contents_dirlinks = keepContentsDirlinks;
    max_layers = maxLayers;
    max_store_layers = maxStoreLayers;
    roots = storePaths fn "contents" roots;
    copy_to_root = storePaths fn "copyToRoot" copyToRoot;
    link_to_root = storePaths fn "contents" linkToRoot;
    modes_files = modesFiles;
    from_image =
      if fromImage == null then null
      else if builtins.isString fromImage && builtins.match "[a-z-]+:.*" fromImage != null then fromImage
      # An image in another format says how to read it (pullImageFromManifest: dir:…).
      else fromImage.strataReference or "docker-archive:${toString fromImage}";
  };

  # nix2container writes config keys in lower camel case; strata's spec has Docker's names.
  dockerKey = { entrypoint = "Entrypoint"; cmd = "Cmd"; env = "Env"; workingDir = "WorkingDir"; user = "User";
                exposedPorts = "ExposedPorts"; volumes = "Volumes"; labels = "Labels"; stopSignal = "StopSignal"; };
  dockerConfig = config: builtins.listToAttrs (map (k: { name = dockerKey.${k} or k; value = config.${k}; }) (builtins.attrNames config));

  # A layer made with buildLayer, else an evaluation error naming the argument.
  layerOf = fn: l: if builtins.isAttrs l && l._strataLayer or false then l
    else throw "strata.${fn}: `layers` must hold layers made with buildLayer, not a ${builtins.typeOf l}";


  # A runnable derivation: `$out/bin/<name>` runs `strata <command> "$@"`.
  runner = name: command: strataDerivation {
    inherit name;
    strataMode = "executable";
    strataPath = "bin/${name}";
    strataText = "#!/bin/sh\nexec ${strataBin} ${command} \"$@\"\n";
  } // { meta.mainProgram = name; };

  # `text` in `$out/path` (`mode`: "file", read-only; or "executable").
  textFile = { name, path, text, mode ? "file" }: "${strataDerivation { inherit name; strataMode = mode; strataPath = path; strataText = text; }}/${path}";

  # A word for a POSIX shell: quoted, whatever it holds.
  shellWord = s: "'" + builtins.replaceStrings [ "'" ] [ "'\\''" ] s + "'";

  # The OCI architecture of the images' system.
  hostArch = { x86_64-linux = "amd64"; aarch64-linux = "arm64"; i686-linux = "386"; riscv64-linux = "riscv64"; }.${imageSystem} or "amd64";

  suffix = compressor: { gz = ".tar.gz"; zstd = ".tar.zst"; none = ".tar"; }.${compressor};

  # dockerTools' image names are lower case (`lib.toLower name`); with builtins only.
  toLower = builtins.replaceStrings
    [ "A" "B" "C" "D" "E" "F" "G" "H" "I" "J" "K" "L" "M" "N" "O" "P" "Q" "R" "S" "T" "U" "V" "W" "X" "Y" "Z" ]
    [ "a" "b" "c" "d" "e" "f" "g" "h" "i" "j" "k" "l" "m" "n" "o" "p" "q" "r" "s" "t" "u" "v" "w" "x" "y" "z" ];
  # dockerTools' `config` may be null (its default), and its Cmd, Entrypoint and Shell a
  # single string or a derivation (Docker reads a string as a one-element list).
  configOf = config: if config == null then { } else config // builtins.mapAttrs
    (_: v: if builtins.isList v then v else [ (toString v) ])
    (builtins.intersectAttrs { Cmd = null; Entrypoint = null; Shell = null; } config);

  # Nothing, or an argument strata does not take, named in an evaluation error.
  refuse = fn: arg: why: throw "strata.${fn}: `${arg}` is not supported: ${why}";

  # The tree the image's commands shape (dockerTools' customisation layer), laid over / in
  # a final layer: the join of `contents` (made by strata as their links from / are, so the
  # commands see /bin/sh -> /nix/store/…), then `extraCommands` run in it, then
  # `fakeRootCommands` under fakeroot (with `enableFakechroot`, under proot too, / being the
  # tree and the store visible, as dockerTools does), with the shell and tools of the
  # caller's nixpkgs. Modes and owners are recorded before the store makes every file
  # read-only and the builder's, and strata gives them back (`chmod 1777 tmp`, `chown 1000
  # /data` hold). { copyToRoot, modesFiles } to add to a spec; null without commands.
  #
  # With `copies` (buildImage's runAsRoot), the tree starts as a copy of those trees, laid
  # over each other in order as buildImage lays copyToRoot. With a `base` (a tar of the base
  # image's file system, buildImage's runAsRoot over fromImage), the commands run over the
  # base's files too, and the tree is what they changed: new and changed entries (with their
  # parent directories) and a whiteout (`.wh.NAME`, an empty file) for each entry removed.
  customisation = fn: { contents ? [ ], copies ? [ ], base ? null, extraCommands ? "", fakeRootCommands ? "", enableFakechroot ? false }:
    let
      needs = arg: x: if pkgs ? ${x} then pkgs.${x}
        else throw "strata.${fn}: `${arg}` needs ${x} from nixpkgs: import strata's library with your nixpkgs (`pkgs = …`), as dockerTools takes it from its own";
      fakeroot = fakeRootCommands != "";
      arg = if fakeroot then "fakeRootCommands" else "extraCommands";
      tools = (if fakeroot then [ (needs arg "fakeroot") ] else [ ])
        ++ (if fakeroot && enableFakechroot then [ (needs "enableFakechroot" "proot") ] else [ ])
        ++ (if base != null then [ (needs "runAsRoot" "gnutar") (needs "runAsRoot" "gnugrep") ] else [ ])
        ++ [ (needs arg "coreutils") (needs arg "findutils") ];
      links = strataDerivation {
        name = "contents-links";
        strataMode = "links";
        strataPaths = builtins.concatStringsSep " " contents;
      };
      made = derivation {
        name = "customisation-layer";
        inherit system extraCommands fakeRootCommands;
        outputs = [ "out" "modes" ];
        builder = needs arg "runtimeShell";
        PATH = builtins.concatStringsSep ":" (map (t: "${t}/bin") tools);
        links = if contents == [ ] then "" else links;
        copies = builtins.concatStringsSep " " copies;
        base = if base == null then "" else base;
        storeDir = storeDir;
        args = [ "-c" ''
          set -e
          # Shaped in the build directory (proot cannot have / inside the store it shows),
          # then moved to $out. Owners and modes are fakeroot's (its state kept in $state).
          root="$NIX_BUILD_TOP/root"
          state="$NIX_BUILD_TOP/fakeroot.state"
          mkdir -p "$root"
          : > "$state"
          faked() { if [ -n "$fakeRootCommands" ]; then fakeroot -i "$state" -s "$state" "$@"; else "$@"; fi; }
          # PATH<TAB>what an entry is: changed when any of it changes.
          snapshot() { (cd "$root" && faked find . -mindepth 1 -printf '%P\t%y %m %U %G %s %T@ %i %l\n') | LC_ALL=C sort; }
          if [ -n "$base" ]; then
            faked tar -xpf "$base" -C "$root"
            snapshot > "$NIX_BUILD_TOP/before"
          fi
          # Each tree over the ones before; the store's modes would keep the next one out.
          for tree in $links $copies; do cp -a "$tree/." "$root/" && chmod -R u+w "$root"; done
          cd "$root"
          eval "$extraCommands"
          cd "$root"
          if [ -n "$fakeRootCommands" ]; then
            ${if enableFakechroot then ''
              proot -r "$root" -b "$storeDir" -b /dev -b /proc -b "$NIX_BUILD_TOP" -w / \
                fakeroot -i "$state" -s "$state" "$builder" -c 'eval "$fakeRootCommands"'
            '' else ''
              fakeroot -i "$state" -s "$state" "$builder" -c 'eval "$fakeRootCommands"'
            ''}
          fi
          cd "$NIX_BUILD_TOP"
          if [ -n "$base" ]; then
            snapshot > after
            # What changed or is new, parents first; what is gone, each under a parent that stays.
            LC_ALL=C comm -13 before after | cut -f1 > changed
            cut -f1 before > before.paths
            cut -f1 after > after.paths
            LC_ALL=C comm -23 before.paths after.paths > gone
            mkdir -p tree
            while IFS= read -r path; do
              mkdir -p "tree/$(dirname "$path")"
              if [ -d "$root/$path" ] && [ ! -L "$root/$path" ]; then mkdir -p "tree/$path"; else cp -a "$root/$path" "tree/$path"; fi
            done < changed
            while IFS= read -r path; do
              parent=$(dirname "$path")
              if [ "$parent" = . ] || grep -qxF "$parent" after.paths; then
                if [ "$parent" = . ] || ! grep -qxF "$parent" gone; then
                  mkdir -p "tree/$parent" && : > "tree/$parent/.wh.$(basename "$path")"
                fi
              fi
            done < gone
            # Every entry of the tree gets the mode and owner it has in $root (whiteouts root's).
            (cd tree && find . -mindepth 1 -not -type l -not -name '.wh.*' -printf '%P\n') | LC_ALL=C sort > kept
            (cd "$root" && faked find . -mindepth 1 -not -type l -printf '%P\t%m %U %G\n') | LC_ALL=C sort > owners
            LC_ALL=C join -t "$(printf '\t')" kept owners | while IFS="$(printf '\t')" read -r path what; do
              echo "$what /$path"
            done > "$modes"
            mv tree "$out"
          else
            (cd "$root" && faked find . -mindepth 1 -not -type l -printf "${if fakeroot then "%m %U %G" else "%m"} /%P\n") > "$modes"
            mv "$root" "$out"
          fi
        '' ];
      };
    in
    if extraCommands == "" && fakeRootCommands == "" then null
    else { copyToRoot = [ made.out ]; modesFiles = [ "${made.modes}" ]; };

  # A perm rule giving what `regex` matches (whole image paths) to an owner; none for root.
  ownerPerms = regex: { uid ? 0, gid ? 0, uname ? "root", gname ? "root" }:
    if uid == 0 && gid == 0 && uname == "root" && gname == "root" then [ ]
    else [ ({ inherit regex uid gid; } // (if uname != "root" then { inherit uname; } else { }) // (if gname != "root" then { inherit gname; } else { })) ];
  # dockerTools' layered images give uid/gid/uname/gname the store (Nix run by that user
  # can use it); buildImage gives uid/gid every file of its layer.
  storeOwner = ownerPerms "/nix(?:/store(?:/.*)?)?";
  everyFile = ownerPerms ".*";

  # The spec of dockerTools' layered images (streamLayeredImage, buildLayeredImage), from
  # their arguments; an argument they do not take is an evaluation error naming it.
  # `compat`: dockerTools' own meaning of maxLayers: every layer, the base image's included,
  # one of them always kept for the customisation layer (strata's takes that layer only when
  # there is something to put in it).
  layeredSpec = { fn, compat }:
    { name, tag ? null, contents ? [ ], config ? null, maxLayers ? 100, created ? defaultCreated
    , mtime ? null, fromImage ? null, architecture ? null, includeNixDB ? false, includeStorePaths ? true
    , uid ? 0, gid ? 0, uname ? "root", gname ? "root", meta ? { }, compressor ? "gz", layeringPipeline ? null
    , extraCommands ? "", fakeRootCommands ? "", enableFakechroot ? false, passthru ? { }, debug ? false }:
    let
      contentList = storePaths fn "contents" contents;
      shaped = customisation fn { contents = contentList; inherit extraCommands fakeRootCommands enableFakechroot; };
    in
    if layeringPipeline != null
    then refuse fn "layeringPipeline" "strata splits the closure itself (maxLayers), and keeps layers across releases (strata build --previous)"
    else mkSpec fn ({
      inherit tag created fromImage architecture includeStorePaths;
      mtime = if mtime == null && compat then defaultCreated else mtime;
      name = toLower name;
      config = configOf config;
      # Shaped by commands, the join of `contents` is their tree; else strata links it.
      roots = contentList;
      linkToRoot = if shaped == null then contentList else [ ];
      copyToRoot = if shaped == null then [ ] else shaped.copyToRoot;
      modesFiles = if shaped == null then [ ] else shaped.modesFiles;
      initializeNixDatabase = includeNixDB;
      perms = storeOwner { inherit uid gid uname gname; };
      inherit maxLayers;
    } // (if compat then { maxStoreLayers = if maxLayers > 1 then maxLayers - 1 else 1; } else { }));

  # The most layers a container engine stacks (overlayfs' bound, less some room).
  maxLayerBound = 125;

  tarball = fn: { compressor ? "gz", ... }: spec: image {
    drvName = "docker-image-${drvNameOf spec.name}${suffix (oneOf fn "compressor" [ "gz" "zstd" "none" ] compressor)}";
    mode = "tarball";
    inherit spec;
    extra.strataCompressor = compressor;
  };

  # The file system of an image (a docker-archive, or any image of this library) as one tar.
  exportImageWith = { fn, fromImage, name }: strataDerivation {
    inherit name;
    strataMode = "export";
    strataImage = builtins.head (storePaths fn "fromImage" fromImage);
  };

  # What dockerTools' image results carry besides the image.
  passthruOf = { meta ? { }, passthru ? { }, ... }: result:
    result // passthru // { inherit meta; imageRefUnsafe = builtins.unsafeDiscardStringContext "${result.imageName}:${result.imageTag}"; };

  # dockerTools' buildImage: `compat` gives its store paths one layer, as dockerTools does
  # (strata's spreads them over `maxLayers`). `runAsRoot` (dockerTools runs it as root in a
  # VM over the base image and copyToRoot) runs here under fakeroot and proot over the base
  # image's file system (exported by strata) and a copy of the copyToRoot trees; the layer
  # holds what it changed, with the owners and modes it set, and whiteouts for what it
  # removed.
  buildImageWith = { fn, compat }:
    { name, tag ? null, config ? null, copyToRoot ? null, contents ? null, fromImage ? null
    , fromImageName ? null, fromImageTag ? null, keepContentsDirlinks ? false, created ? defaultCreated
    , uid ? 0, gid ? 0, compressor ? "gz", architecture ? null, includeNixDB ? false, meta ? { }
    , extraCommands ? "", runAsRoot ? null, diskSize ? 1024, buildVMMemorySize ? 512, ... }@args:
    let
      strataOnly = builtins.filter (a: args ? ${a}) [ "maxLayers" ];
      trees = storePaths fn "copyToRoot" (if copyToRoot != null then copyToRoot else contents);
      # The base image's file system, for runAsRoot to run over.
      baseRoot = if fromImage == null then null else exportImageWith { fn = fn; inherit fromImage; name = "base-root.tar"; };
      asRoot = if runAsRoot == null then null
        else customisation fn { copies = trees; base = baseRoot; fakeRootCommands = runAsRoot; enableFakechroot = true; inherit extraCommands; };
      extra = if asRoot != null then asRoot
        else { copyToRoot = trees; modesFiles = [ ]; } // (let c = customisation fn { inherit extraCommands; }; in
          if c == null then { } else { copyToRoot = trees ++ c.copyToRoot; inherit (c) modesFiles; });
      known = [ "name" "tag" "config" "copyToRoot" "contents" "fromImage" "fromImageName" "fromImageTag" "keepContentsDirlinks"
                "created" "uid" "gid" "compressor" "architecture" "includeNixDB" "meta" "extraCommands" "runAsRoot" "diskSize"
                "buildVMMemorySize" ] ++ (if compat then [ ] else [ "maxLayers" ]);
      unknown = builtins.filter (a: !builtins.elem a known) (builtins.attrNames args);
    in
    if unknown != [ ] then throw "strata.${fn}: no argument `${builtins.head unknown}`${if strataOnly != [ ] then " (strata.buildImage takes it)" else ""}"
    else passthruOf args (tarball fn args (mkSpec fn ({
      inherit tag created architecture keepContentsDirlinks;
      # fromImageName/fromImageTag choose among a docker-archive's images; strata reads
      # archives of one image (whatever its name), and says so of others.
      inherit fromImage;
      inherit (extra) copyToRoot modesFiles;
      name = toLower name;
      config = configOf config;
      initializeNixDatabase = includeNixDB;
      perms = everyFile { inherit uid gid; };
    } // (if compat then { maxLayers = maxLayerBound; maxStoreLayers = 1; } else { maxLayers = args.maxLayers or 100; }))));

  # dockerTools' nix-shell images (streamNixShellImage, buildNixShellImage): an image that
  # is what `nix-shell` of `drv` is. Its environment is the one Nix gives `drv`'s builder (each
  # attribute as a string, passAsFile's as files, outputs by path, the sandbox's variables
  # with /build as the build directory), an rc file sources stdenv's setup (if `drv` has a
  # stdenv) and runs the shell hook, `buildDerivation` runs the build; it runs as uid:gid,
  # which may add to the store. nix-build.cc and local-derivation-goal.cc (Nix 2.8) define
  # all of this; the caller's nixpkgs gives the shell (bashInteractive), cacert, binSh and
  # usrBinEnv. Returns the layered image's arguments.
  nixShellArgs = fn: { drv, name ? drv.name + "-env", tag ? null, uid ? 1000, gid ? 1000, homeDirectory ? "/build"
                     , shell ? null, command ? null, run ? null }:
    let
      needs = x: if pkgs != null && pkgs ? ${x} then pkgs.${x}
        else throw "strata.${fn}: needs ${x} from nixpkgs: import strata's library with your nixpkgs (`pkgs = …`)";
      attrs = drv.drvAttrs or (throw "strata.${fn}: `drv` must be a derivation");
      theShell = if shell != null then shell else "${needs "bashInteractive"}/bin/bash";
      buildDir = "/build";
      # A derivation attribute as Nix passes it to the builder (paths copied to the store).
      stringValue = v: if builtins.isPath v then "${v}" else if builtins.isList v then toString (map stringValue v) else toString v;
      builderScript = textFile {
        name = "buildDerivation";
        path = "bin/buildDerivation";
        mode = "executable";
        text = "#!${theShell}\nexec ${shellWord (stringValue attrs.builder)} ${toString (map (a: shellWord (stringValue a)) (attrs.args or [ ]))}\n";
      };
      staticPath = "${dirOf theShell}:${dirOf builderScript}";
      rcfile = textFile {
        name = "nix-shell-rc";
        path = "nix-shell-rc";
        text = ''
          unset PATH
          dontAddDisableDepTrack=1
          [ -e $stdenv/setup ] && source $stdenv/setup
          PATH=${staticPath}:"$PATH"
          SHELL=${shellWord theShell}
          BASH=${shellWord theShell}
          set +e
          [ -n "$PS1" -a -z "$NIX_SHELL_PRESERVE_PROMPT" ] && PS1='\n\[\033[1;32m\][nix-shell:\w]\$\[\033[0m\] '
          if [ "$(type -t runHook)" = function ]; then
            runHook shellHook
          fi
          unset NIX_ENFORCE_PURITY
          shopt -u nullglob
          shopt -s execfail
        '' + (if command == null && run == null then "" else ''
          ${if command != null then command else ""}
          ${if run != null then run else ""}
          exit
        '');
      };
      passAsFile = attrs.passAsFile or [ ];
      drvEnv = builtins.listToAttrs (map
        (n:
          if builtins.elem n passAsFile
          then { name = "${n}Path"; value = textFile { name = "pass-as-text-${n}"; path = n; text = stringValue attrs.${n}; }; }
          else { name = n; value = stringValue attrs.${n}; })
        (builtins.attrNames attrs))
        // builtins.listToAttrs (map (o: { name = o; value = builtins.unsafeDiscardStringContext drv.${o}.outPath; }) (drv.outputs or [ "out" ]));
      env = {
        SSL_CERT_FILE = "${needs "cacert"}/etc/ssl/certs/ca-bundle.crt";
        PATH = staticPath;
        HOME = homeDirectory;
        NIX_STORE = storeDir;
        NIX_BUILD_CORES = "1";
      } // drvEnv // {
        NIX_BUILD_TOP = buildDir;
        TMPDIR = buildDir;
        TEMPDIR = buildDir;
        TMP = buildDir;
        TEMP = buildDir;
        PWD = buildDir;
        TERM = "xterm-256color";
      };
      # The build user, so that programs find its home (as fakeNss with one more line).
      users = map (f: dirOf (dirOf f)) [
        (textFile { name = "nix-shell-passwd"; path = "etc/passwd"; text = "root:x:0:0:root user:/var/empty:/bin/sh\nnobody:x:65534:65534:nobody:/var/empty:/bin/sh\nnixbld:x:${toString uid}:${toString gid}:Build user:${homeDirectory}:/noshell\n"; })
        (textFile { name = "nix-shell-group"; path = "etc/group"; text = "root:x:0:\nnobody:x:65534:\nnixbld:!:${toString gid}:\n"; })
      ];
    in
    if attrs.__structuredAttrs or false then throw "strata.${fn}: `drv` (${drv.name}) uses __structuredAttrs, which nix-shell images do not take"
    else if command != null && run != null then throw "strata.${fn}: give `command` or `run`, not both"
    else {
      inherit name tag;
      contents = [ (needs "dockerTools").binSh (needs "dockerTools").usrBinEnv ] ++ users;
      fakeRootCommands = ''
        mkdir -p .${storeDir}
        chmod a+w+t .${storeDir}
        mkdir -p .${buildDir}
        chown -R ${toString uid}:${toString gid} .${buildDir}
      '';
      config = {
        User = "${toString uid}:${toString gid}";
        Cmd = if run == null then [ theShell "--rcfile" rcfile ] else [ theShell rcfile ];
        WorkingDir = buildDir;
        Env = map (n: "${n}=${env.${n}}") (builtins.attrNames env);
      };
    };

  streamLayeredImageWith = flavour: { name, ... }@args:
    passthruOf args (image {
      drvName = "stream-${drvNameOf name}";
      mode = "stream";
      spec = layeredSpec flavour args;
    });

  buildLayeredImageWith = flavour: args:
    passthruOf args (tarball flavour.fn args (layeredSpec flavour args));

  # nixpkgs dockerTools.pullImage: an image from a registry, by digest, as a docker-archive in
  # the store (a fixed-output derivation: `sha256` or `hash` is the archive's), named
  # finalImageName:finalImageTag; usable as any image's `fromImage`. Fetched by strata itself,
  # with the layers as the registry holds them.
  fetchImage =
    { imageName, imageDigest, sha256 ? null, hash ? null, os ? "linux", arch ? null
    , finalImageName ? imageName, finalImageTag ? "latest", tlsVerify ? true, name ? null }:
    strataDerivation {
      name = if name != null then name else "docker-image-${drvNameOf finalImageName}-${finalImageTag}.tar";
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

  # nix2container's perms: `path` names a store path (in the image's store, or a tree laid
  # over /), and `regex` is searched in the store path of each of its files.
  n2cPerm = p: {
    store_path = toString p.path;
    regex = p.regex or "";
    mode = p.mode or null;
    uid = p.uid or null;
    gid = p.gid or null;
    uname = p.uname or null;
    gname = p.gname or null;
  };

  # An isolated layer, and its own derivation: the record of the layer's digests
  # (uncompressed and in `compressor`'s codec), made once and substitutable like any store
  # path; an image with this layer takes them from it. The layer holds the closure of `deps`
  # and the `copyToRoot` trees, minus what `layers` (earlier buildLayer layers) hold, with
  # `perms` (nix2container's) applied. `reproducible` is taken and changes nothing: strata
  # never stores a layer's tar, and records its digests either way.
  buildLayerWith = { fn, compat }:
    { deps ? [ ], copyToRoot ? null, contents ? null, layers ? [ ], compressor ? "gz", perms ? [ ]
    , reproducible ? true, maxLayers ? 1, ignore ? null
    , metadata ? (if compat then { created_by = "nix2container"; } else { }) }:
    let
      unknownMeta = builtins.filter (k: !builtins.elem k [ "created_by" "author" "comment" ]) (builtins.attrNames metadata);
      own = {
        roots = storePaths fn "deps" deps;
        copy_to_root = storePaths fn "copyToRoot" (if copyToRoot != null then copyToRoot else contents);
        # nix2container's `ignore`: a store path left out of the layer.
        ignore = storePaths fn "ignore" ignore;
        # nix2container's `maxLayers`: the layer split into up to that many, by popularity.
        max_layers = maxLayers;
        created_by = metadata.created_by or null;
        author = metadata.author or null;
        comment = metadata.comment or null;
      };
      below = map (l: layerOf fn l) layers;
      chain = chainOf below ++ [ own ];
      allPerms = builtins.concatLists (map (l: l.strataPerms) below) ++ map n2cPerm perms;
      record = image {
        drvName = "strata-layer.json";
        mode = "layer";
        spec = mkSpec fn { name = "layer"; layers = chain; maxLayers = builtins.foldl' (n: l: n + l.max_layers) 0 chain; perms = allPerms; };
        extra.strataCompressor = oneOf fn "compressor" [ "gz" "zstd" "none" ] compressor;
      };
    in
    if unknownMeta != [ ] then refuse fn "metadata.${builtins.head unknownMeta}" "a layer's history entry has created_by, author and comment"
    else record // {
      _strataLayer = true;
      strataChain = chain;
      strataPerms = allPerms;
      strataPackages = toList deps ++ toList copyToRoot ++ toList contents;
    };

  # The explicit layers of buildLayer layers: each one's own, below those it was built on
  # (nix2container's nested layers), each once, in order; one with nothing in it is no layer
  # (as in nix2container).
  chainOf = layers: builtins.foldl' (acc: l: if builtins.elem l acc || (l.roots == [ ] && l.copy_to_root == [ ]) then acc else acc ++ [ l ]) [ ] (builtins.concatMap (l: l.strataChain) layers);

  # nix2container-style images: the result is the image's description (spec, closure graph,
  # and the digests the image has, uncompressed and in `compressor`'s codec, computed at build
  # time), no tarball; runners copy it where it goes, naming blobs by the recorded digests
  # before reading anything, and strata checks it matches what was recorded. `compat`:
  # nix2container's meaning of maxLayers (the image's own store layers, `layers` and the
  # base image's not counted) and its defaults (maxLayers 1, created 0001-01-01).
  describedWith = { fn, compat }:
    { name, tag ? null, config ? { }, copyToRoot ? null, contents ? null, fromImage ? null
    , maxLayers ? (if compat then 1 else 100), layers ? [ ], perms ? [ ]
    , created ? (if compat then "0001-01-01T00:00:00Z" else defaultCreated), initializeNixDatabase ? false
    , nixUid ? 0, nixGid ? 0, arch ? null, compressor ? "gz", meta ? { } }:
    let
      below = map (l: layerOf fn l) layers;
      trees = storePaths fn "copyToRoot" (if copyToRoot != null then copyToRoot else contents);
      described = image {
        drvName = "image-${drvNameOf name}.json";
        mode = "description";
        extra = {
          strataCompressor = oneOf fn "compressor" [ "gz" "zstd" "none" ] compressor;
          strataLayerRecords = below;
        };
        spec = mkSpec fn ({
          inherit tag created initializeNixDatabase;
          name = toLower name;
          copyToRoot = trees;
          # nix2container's "" is no base image.
          fromImage = if fromImage == "" then null else fromImage;
          architecture = arch;
          config = dockerConfig config;
          layers = chainOf below;
          perms = builtins.concatLists (map (l: l.strataPerms) below) ++ map n2cPerm perms;
          # nix2container's files are a second past the epoch, whatever `created` says (its
          # default, 0001-01-01, is before the epoch a tar header can hold).
          mtime = if compat then defaultCreated else null;
        } // (if initializeNixDatabase && (nixUid != 0 || nixGid != 0) then { inherit nixUid nixGid; } else { })
          // (if compat then { maxLayers = maxLayerBound; maxStoreLayers = maxLayers; } else { inherit maxLayers; }));
      };
      ref = "${described.imageName}:${described.imageTag}";
      # The licences of the packages given (their meta; the store keeps none), by base name.
      licenses = builtins.listToAttrs (builtins.concatMap
        (x:
          let license = if builtins.isAttrs x then x.meta.license or null else null;
            ids = map (l: l.spdxId or null) (if builtins.isList license then license else [ license ]);
          in if license == null || builtins.elem null ids then [ ] else [{ name = builtins.unsafeDiscardStringContext (baseNameOf (toString x)); value = builtins.concatStringsSep " AND " ids; }])
        (toList (if copyToRoot != null then copyToRoot else contents) ++ builtins.concatMap (l: l.strataPackages or [ ]) below));
      sbomOf = format: strataDerivation {
        name = "${drvNameOf name}-sbom.${if format == "spdx" then "spdx" else "cdx"}.json";
        strataMode = "sbom";
        strataImage = described;
        strataSbomFormat = format;
        strataLicenses = builtins.toJSON licenses;
      };
    in
    described // {
      inherit meta fromImage;
      imageRefUnsafe = builtins.unsafeDiscardStringContext ref;
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

  # What dockerTools has beside its image functions, from the caller's nixpkgs (they are
  # plain derivations and strings: binSh, usrBinEnv, caCertificates, fakeNss, shadowSetup).
  dockerToolsHelper = attr:
    if pkgs != null && pkgs ? dockerTools && pkgs.dockerTools ? ${attr} then pkgs.dockerTools.${attr}
    else throw "strata.dockerTools.${attr} comes from nixpkgs' dockerTools: import strata's library with your nixpkgs (`pkgs = …`)";

in
rec {
  # nixpkgs dockerTools.buildImage: a compressed docker-archive in the store
  # (`docker load < result`), layered by strata within maxLayers.
  buildImage = buildImageWith { fn = "buildImage"; compat = false; };

  # dockerTools.buildImageWithNixDb: buildImage with the Nix database of its store paths.
  buildImageWithNixDb = args: buildImage (args // { includeNixDB = true; });

  # nixpkgs dockerTools.streamLayeredImage: an executable that writes the image to stdout
  # (`$(nix-build) | docker load`); no image bytes in the store. `contents` are joined as
  # dockerTools joins them (symlinkJoin): each in the store with its closure, `/` holding
  # symlinks into it (/bin/sh -> /nix/store/…-bash/bin/sh).
  streamLayeredImage = streamLayeredImageWith { fn = "streamLayeredImage"; compat = false; };

  # nixpkgs dockerTools.buildLayeredImage: the same image as a compressed docker-archive.
  buildLayeredImage = buildLayeredImageWith { fn = "buildLayeredImage"; compat = false; };

  # dockerTools.buildLayeredImageWithNixDb: buildLayeredImage with the Nix database.
  buildLayeredImageWithNixDb = args: buildLayeredImage (args // { includeNixDB = true; });

  # A nix2container-style image with strata's defaults (maxLayers counts every layer, 100).
  describeImage = describedWith { fn = "describeImage"; compat = false; };
  buildLayer = buildLayerWith { fn = "buildLayer"; compat = false; };

  # nixpkgs dockerTools.pullImage (see fetchImage above).
  pullImage = fetchImage;

  # Drop-ins: nixpkgs' dockerTools and nix2container, their function names, arguments,
  # defaults and meaning (the README's table says where strata differs, and why). A user
  # changes where `dockerTools` or `nix2container` comes from, nothing else.
  dockerTools = rec {
    buildImage = buildImageWith { fn = "dockerTools.buildImage"; compat = true; };
    buildImageWithNixDb = args: buildImage (args // { includeNixDB = true; });
    streamLayeredImage = streamLayeredImageWith { fn = "dockerTools.streamLayeredImage"; compat = true; };
    buildLayeredImage = buildLayeredImageWith { fn = "dockerTools.buildLayeredImage"; compat = true; };
    buildLayeredImageWithNixDb = args: buildLayeredImage (args // { includeNixDB = true; });
    pullImage = fetchImage;
    # One docker-archive holding the images of several (docker-archives: buildImage's and
    # buildLayeredImage's results, pullImage's); `docker load` loads them all.
    mergeImages = images: strataDerivation {
      name = "merge-docker-images";
      strataMode = "merge";
      strataImages = builtins.concatStringsSep " " (storePaths "dockerTools.mergeImages" "images" images);
      strataCompressor = "gz";
    };
    # The file system of `fromImage` (a docker-archive, or any image of this library) as one
    # tar, made by strata without a VM. (fromImageName/fromImageTag choose among an archive's
    # images in dockerTools; strata reads archives of one. diskSize sized dockerTools' VM.)
    exportImage = { fromImage, name ? fromImage.name or "exported-image.tar", fromImageName ? null, fromImageTag ? null, diskSize ? 1024 }:
      exportImageWith { fn = "dockerTools.exportImage"; inherit fromImage name; };
    streamNixShellImage = args: streamLayeredImage (nixShellArgs "dockerTools.streamNixShellImage" args);
    buildNixShellImage = args: buildLayeredImage (nixShellArgs "dockerTools.buildNixShellImage" args);
    shadowSetup = dockerToolsHelper "shadowSetup";
    binSh = dockerToolsHelper "binSh";
    usrBinEnv = dockerToolsHelper "usrBinEnv";
    caCertificates = dockerToolsHelper "caCertificates";
    fakeNss = dockerToolsHelper "fakeNss";
  };

  nix2container = {
    buildImage = describedWith { fn = "nix2container.buildImage"; compat = true; };
    buildLayer = buildLayerWith { fn = "nix2container.buildLayer"; compat = true; };
    # nix2container's pullImage: the same fetch; its result works as `fromImage`.
    pullImage = { imageName, imageDigest, sha256, arch ? null, tlsVerify ? true, os ? "linux" }:
      fetchImage { inherit imageName imageDigest sha256 arch tlsVerify os; };
    # nix2container's pullImageFromManifest: the image a manifest file names (`imageManifest`,
    # what `getManifest` prints), each blob a fixed-output derivation (its digest is its hash:
    # no hash to give), fetched by strata and joined into skopeo's directory format; usable as
    # `fromImage`, or written anywhere (`strata copy dir:$result …`).
    pullImageFromManifest =
      { imageName, imageManifest ? null, imageTag ? "latest", os ? "linux", arch ? hostArch, tlsVerify ? true
      , registryUrl ? "registry.hub.docker.com", meta ? { } }:
      let
        fn = "nix2container.pullImageFromManifest";
        # Docker Hub's names, as strata's references spell them.
        repository = if registryUrl == "registry.hub.docker.com" || registryUrl == "docker.io" then "docker.io/${imageName}" else "${registryUrl}/${imageName}";
        tls = if tlsVerify then "" else " --tls-verify=false";
        getManifest = runner "get-manifest" "inspect --raw${tls} --platform ${os}/${arch} docker://${repository}:${imageTag}";
        text = builtins.readFile (if imageManifest != null then imageManifest else throw "strata.${fn}: give `imageManifest` (the file `getManifest` prints) to pull the image");
        manifest = builtins.fromJSON text;
        digest = "sha256:${builtins.hashString "sha256" text}";
        blob = d: strataDerivation {
          name = "blob-${builtins.substring 7 64 d.digest}";
          strataMode = "blob";
          strataSource = "docker://${repository}@${digest}";
          strataDigest = d.digest;
          strataSize = toString d.size;
          strataTlsVerify = if tlsVerify then "1" else "0";
          outputHashMode = "flat";
          outputHashAlgo = "sha256";
          outputHash = builtins.substring 7 64 d.digest;
          impureEnvVars = [ "http_proxy" "https_proxy" "no_proxy" "HTTP_PROXY" "HTTPS_PROXY" "NO_PROXY" ];
        };
        image = strataDerivation {
          name = "image-${drvNameOf imageName}";
          strataMode = "dir";
          strataManifest = "${imageManifest}";
          strataBlobs = builtins.concatStringsSep " " (map blob ([ manifest.config ] ++ manifest.layers));
        };
      in
      image // { inherit getManifest imageName imageTag meta; strataReference = "dir:${image}"; };
  };

  # One image for several platforms: `images` are images of this library (descriptions,
  # stream scripts or tarballs), each for its own architecture (describeImage's `arch`,
  # buildImage's via its spec), named `name` and tagged `tag` (default: the hash of the
  # index's file) as one. The result is the index's description, with the runners of
  # described images: copyToRegistry and copyTo write an OCI image index; copyToPodman and
  # copyToDockerDaemon load the host's platform.
  buildImageIndex = { name, tag ? null, images }:
    let
      fn = "buildImageIndex";
      paths = storePaths fn "images" images;
      file = strataDerivation {
        name = "image-index-${drvNameOf name}.json";
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
  inherit (import ./images.nix { inherit describeImage buildLayer; }) mkImage imageSystemOf imageOptions imageConfigOptions;

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
