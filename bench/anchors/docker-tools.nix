# nixpkgs' dockerTools examples (pkgs/build-support/docker/examples.nix of a nixpkgs
# checkout), unchanged, with strata's drop-in as dockerTools.
{ strataBin, examples }:
let
  s = import ./stand-ins.nix { inherit strataBin; };
  dt = s.lib.dockerTools;
in
(import examples {
  inherit (s) pkgs;
  inherit (dt) buildImage buildLayeredImage pullImage buildImageWithNixDb streamNixShellImage;
  fakeNss = s.pkgs.dockerTools.fakeNss or dt.fakeNss;
  shadowSetup = "true";
  pkgsCross = s.pkgs.pkgsCross;
}) // { nixStorePath = "${s.pkgs.nix}"; busyboxPath = "${s.pkgs.pkgsStatic.busybox}"; }
