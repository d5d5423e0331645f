# Kurtosis' NixBuildSpec(image_name = "hello-image", flake_location_dir = this directory):
#   nix build .#hello-image --print-out-paths --extra-experimental-features "flakes nix-command"
# gives a gzipped docker-archive whose manifest.json names the image in RepoTags[0], so a tool
# can gunzip it, read the tag and hand it to Docker's image load, with no registry between.
{
  inputs.strata.url = "github:strata-oci/strata";

  outputs = { self, strata }:
    let
      system = "x86_64-linux";
      # A runnable closure from the host's toolchain, with builtins only (see examples/hello).
      mk = name: script: derivation {
        inherit name system;
        builder = "/bin/sh";
        args = [ "-c" script ];
        PATH = "/usr/bin:/bin";
      };
      glibc = mk "glibc-2.36" ''
        mkdir -p $out/lib
        cp -L /lib/x86_64-linux-gnu/libc.so.6 /lib64/ld-linux-x86-64.so.2 $out/lib/
      '';
      hello = mk "hello-2.12" ''
        mkdir -p $out/bin
        printf '#include <stdio.h>\nint main(void){puts("Hello from Kurtosis!");return 0;}\n' > h.c
        gcc -O2 -o $out/bin/hello h.c -Wl,--dynamic-linker=${glibc}/lib/ld-linux-x86-64.so.2 -Wl,-rpath,${glibc}/lib
      '';
    in
    {
      packages.${system}.hello-image = strata.lib.${system}.buildImage {
        name = "hello-kurtosis";
        tag = "latest";
        config.Cmd = [ "${hello}/bin/hello" ];
      };
    };
}
