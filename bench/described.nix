# The benchmark closure (closure.nix, release `leaf`) as a nix2container-style description,
# built with the Nix library by the strata under test (`strataBin`, copied into the store),
# its digests recorded uncompressed and in `compressor`'s codec.
{ strataBin, leaf ? "1", compressor ? "gz", system ? builtins.currentSystem }:
let
  strata = derivation {
    name = "strata";
    inherit system;
    builder = "/bin/sh";
    PATH = "/usr/bin:/bin";
    args = [ "-c" "mkdir -p $out/bin && cp ${strataBin} $out/bin/strata" ];
  };
  library = import ../nix { inherit strata; };
  root = import ./closure.nix { inherit system leaf; };
in
library.describeImage {
  name = "bench-described";
  tag = "latest";
  inherit compressor;
  config.entrypoint = [ "${root}/references" ];
}
