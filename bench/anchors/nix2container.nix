# nix2container's own tests (tests/default.nix of a nix2container checkout, with its
# examples/), unchanged, with strata's drop-in as nix2container; `nixpkgsLib` is a checkout of
# nixpkgs.lib (the tests use lib.mapAttrs').
{ strataBin, nix2containerSrc, nixpkgsLib }:
let
  s = import ./stand-ins.nix { inherit strataBin; };
  nix2container = s.lib.nix2container;
  lib = import (nixpkgsLib + "/lib");
  mk = name: script: derivation { inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ]; PATH = "/usr/bin:/bin"; };
  pkgs = s.pkgs // rec {
    inherit lib;
    callPackage = f: args: let fn = if builtins.isFunction f then f else import f; in fn (builtins.intersectAttrs (builtins.functionArgs fn) (pkgs // { inherit lib pkgs; }) // args);
    # Test scripts run on the host.
    writeShellScriptBin = name: text: s.pkgs.writeScriptBin name "#!/bin/bash\n${text}";
    writeShellApplication = { name, text, ... }: s.pkgs.writeScriptBin name "#!${s.pkgs.runtimeShell}\n${text}";
    readline = mk "readline-8.2" "mkdir -p $out/lib && echo readline > $out/lib/libreadline.so.8";
    podman = "/usr"; gnugrep = "/usr"; jq = "/usr"; gnutar = "/usr";
    python3 = throw "python3: no stand-in";
    uwsgi = throw "uwsgi: no stand-in";
  };
  examples = import (nix2containerSrc + "/examples") { inherit pkgs nix2container; };
  tests = import (nix2containerSrc + "/tests") { inherit pkgs examples nix2container; };
in removeAttrs tests [ "all" ]
