# Stand-ins for the nixpkgs the anchors' examples take (none can be fetched on these
# machines), with builtins only: busybox (static) for what runs in images, the host's
# dynamically linked tools where builds need them (fakeroot preloads itself into them), and
# strata's library built with the strata under test. What a stand-in cannot be (GNU bash's
# --version, a real Nix, python) is said in the README's table of results.
{ strataBin, system ? builtins.currentSystem }:
let
  fx = import ../../crates/strata-cli/tests/fixtures { inherit system; };
  bb = fx.busybox;
  # Every applet linked, as nixpkgs' busybox has them.
  fullBusybox = mk "busybox-static-1.36" "mkdir -p $out/bin && cp /bin/busybox $out/bin/ && for a in $(/bin/busybox --list); do [ -e $out/bin/$a ] || ln -s busybox $out/bin/$a; done";
  mk = name: script: derivation { inherit name system; builder = "/bin/sh"; args = [ "-c" script ]; PATH = "/usr/bin:/bin"; };
  # bin/<cmd> for each cmd: the host's /usr/bin/<cmd> where there is one (a build), else
  # busybox's applet (in a container).
  # The host's GNU bash and coreutils with their libraries and loader, runnable in a
  # container as <out>/lib/ld-linux-x86-64.so.2 --library-path <out>/lib <out>/bin/<cmd>.
  gnu = mk "gnu-tools" ''
    mkdir -p $out/bin $out/lib
    for c in bash ${gnuCommands}; do cp -L /usr/bin/$c $out/bin/; done
    for lib in $(for c in $out/bin/*; do ldd $c; done | awk '/=> \// {print $3}' | sort -u); do cp -L $lib $out/lib/; done
    cp -L /lib64/ld-linux-x86-64.so.2 $out/lib/
  '';
  gnuCommands = "cat ls mkdir touch echo cp mv rm chmod chown id whoami env tee head tail wc sort basename dirname true false sleep ln stat test printf readlink";
  # bin/<cmd> for each cmd: the host's /usr/bin/<cmd> where there is one (a build: fakeroot
  # preloads itself into it), else the GNU copy through its loader (in a container).
  tools = name: cmds: mk name ''
    mkdir -p $out/bin
    for c in ${cmds}; do
      printf '#!${bb}/bin/busybox sh\nif [ -x /usr/bin/%s ]; then exec /usr/bin/%s "$@"; fi\nexec ${gnu}/lib/ld-linux-x86-64.so.2 --library-path ${gnu}/lib ${gnu}/bin/%s "$@"\n' $c $c $c > $out/bin/$c
      chmod +x $out/bin/$c
    done
  '';
  script = name: text: mk name ''
    mkdir -p $out/bin
    printf '#!${bb}/bin/busybox sh\n%s\n' ${builtins.toJSON text} > $out/bin/${name}
    chmod +x $out/bin/${name}
  '';
  writeText = name: text: derivation { inherit name system text; builder = "/bin/sh"; args = [ "-c" "printf '%s' \"$text\" > $out" ]; PATH = "/usr/bin:/bin"; };
  # GNU bash (dash on the host, where builds run it).
  bash = mk "bash-5.2" ''
    mkdir -p $out/bin
    printf '#!${bb}/bin/busybox sh\nif [ -x /usr/bin/dash ]; then exec /usr/bin/dash "$@"; fi\nexec ${gnu}/lib/ld-linux-x86-64.so.2 --library-path ${gnu}/lib ${gnu}/bin/bash "$@"\n' > $out/bin/bash
    chmod +x $out/bin/bash
    ln -s bash $out/bin/sh
  '';
  coreutils = tools "coreutils-9.5" gnuCommands;
  hello = fx.hello // { overrideAttrs = _: fx.hello; configureFlags = [ ]; meta.mainProgram = "hello"; };
  helloBin = hello;
  inherit (import ../../crates/strata-cli/tests/fixtures/host-tools.nix { inherit system; }) fakeroot proot findutils gnutar gnugrep;
  fakeNss = mk "fake-nss" ''
    mkdir -p $out/etc
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/var/empty:/bin/sh\n' > $out/etc/passwd
    printf 'root:x:0:\nnobody:x:65534:\n' > $out/etc/group
  '';
  base = rec {
    inherit bash coreutils fakeroot proot writeText system;
    bashInteractive = bash;
    hello = helloBin;
    busybox = fullBusybox;
    pkgsStatic.busybox = fullBusybox;
    inherit findutils gnutar gnugrep;
    runtimeShell = "${bash}/bin/bash";
    redis = mk "redis-7.2" ''
      mkdir -p $out/bin
      printf '#!${bb}/bin/busybox sh\necho redis-server ready\n' > $out/bin/redis-server
      printf '#!${bb}/bin/busybox sh\necho PONG\n' > $out/bin/redis-cli
      chmod +x $out/bin/*
    '';
    nginx = script "nginx" "echo nginx serving";
    emacs = script "emacs" "echo emacs";
    vim = script "vim" "echo vim";
    nano = script "nano" "echo nano";
    nix = mk "nix-2.24" ''
      mkdir -p $out/bin
      printf '#!${bb}/bin/busybox sh\nexec ${fx.nixStore}/lib/ld-linux-x86-64.so.2 --library-path ${fx.nixStore}/lib ${fx.nixStore}/bin/nix-store "$@"\n' > $out/bin/nix-store
      chmod +x $out/bin/nix-store
    '';
    writeTextDir = path: text: derivation { name = "text-dir"; inherit system text path; builder = "/bin/sh"; args = [ "-c" "mkdir -p \"$out/$(dirname $path)\" && printf '%s' \"$text\" > \"$out/$path\"" ]; PATH = "/usr/bin:/bin"; };
    writeScript = name: text: derivation { inherit name system text; builder = "/bin/sh"; args = [ "-c" "printf '%s' \"$text\" > $out && chmod +x $out" ]; PATH = "/usr/bin:/bin"; };
    writeScriptBin = name: text: derivation { inherit name system text; builder = "/bin/sh"; args = [ "-c" "mkdir -p $out/bin && printf '%s' \"$text\" > $out/bin/${name} && chmod +x $out/bin/${name}" ]; PATH = "/usr/bin:/bin"; };
    runCommand = name: env: command: derivation (env // { inherit name system; builder = "/bin/sh"; args = [ "-c" command ]; PATH = "/usr/bin:/bin"; });
    buildEnv = { name, paths, pathsToLink ? [ "/" ], ... }: mk name ''
      mkdir -p $out
      for p in ${builtins.concatStringsSep " " (map toString paths)}; do
        for l in ${builtins.concatStringsSep " " pathsToLink}; do
          if [ -d "$p$l" ]; then mkdir -p "$out$l" && cp -rsn --no-preserve=mode "$p$l/." "$out$l/"; fi
        done
      done
    '';
    testers.invalidateFetcherByDrvHash = f: args: f args;
    # stdenv's setup as far as nix-shell images use it: hooks, and inputs on PATH.
    stdenv = mk "stdenv" ''
      mkdir -p $out
      printf '%s\n' 'runHook() { local hook=$1; eval "''${!hook}"; }' 'PATH="${coreutils}/bin''${PATH:+:$PATH}"' 'for p in $nativeBuildInputs $buildInputs; do PATH="$p/bin:$PATH"; done' > $out/setup
    '' // { hostPlatform.system = system; };
    mkShell = { name ? "nix-shell", nativeBuildInputs ? [ ], buildInputs ? [ ], ... }@args: derivation (removeAttrs args [ "name" "nativeBuildInputs" "buildInputs" ] // {
      inherit name system;
      builder = "${bash}/bin/bash";
      args = [ "-c" "echo nix-shell only > $out" ];
      nativeBuildInputs = map toString nativeBuildInputs;
      buildInputs = map toString buildInputs;
      inherit stdenv;
    });
    cacert = mk "cacert" "mkdir -p $out/etc/ssl/certs && echo cert > $out/etc/ssl/certs/ca-bundle.crt";
    dockerTools = { inherit fakeNss; caCertificates = mk "ca-certificates" "mkdir -p $out/etc/ssl/certs $out/etc/pki/tls/certs && echo cert > $out/etc/ssl/certs/ca-bundle.crt && ln -s ca-bundle.crt $out/etc/ssl/certs/ca-certificates.crt && ln -s ../../../ssl/certs/ca-bundle.crt $out/etc/pki/tls/certs/ca-bundle.crt"; shadowSetup = "true"; binSh = bash; usrBinEnv = coreutils; };
  };
  strata = derivation { name = "strata"; inherit system; builder = "/bin/sh"; args = [ "-c" "mkdir -p $out/bin && cp ${strataBin} $out/bin/strata" ]; PATH = "/usr/bin:/bin"; };
  lib = import ../../nix { inherit strata system; pkgs = base; };
  arm64 = lib // { };
in
{
  inherit lib;
  pkgs = base // {
    dockerTools = lib.dockerTools;
    pkgsCross.aarch64-multiplatform = { dockerTools = (import ../../nix { inherit strata system; imageSystem = "aarch64-linux"; pkgs = base; }).dockerTools; hello = mk "hello-aarch64" "mkdir -p $out/bin && cp /opt/strata-test/arm64/bin/busybox $out/bin/hello"; };
  };
}
