# Images declared in a flake without flake-parts, with strata.lib.mkImages:
#   nix flake check                                   # builds every image
#   nix run .#strata.x86_64-linux.images.hello.do.run.interactivelyWithPodman
#   nix run .#strata.x86_64-linux.images.hello.do.copy.toDockerDaemon
#   strata run --flake .#hello                        # the same image, by name
{
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
  inputs.strata.url = "github:strata-oci/strata";
  inputs.strata.inputs.nixpkgs.follows = "nixpkgs";

  outputs = { self, nixpkgs, strata }: strata.lib.mkImages {
    inherit nixpkgs;
    systems = [ "x86_64-linux" ];
    images.hello = { imagePkgs, ... }: {
      imageConfig = {
        entrypoint = [ "${imagePkgs.hello}/bin/hello" ];
        cmd = [ "from a flake" ];
        env.GREETING = "hello";
        labels."org.opencontainers.image.title" = "hello";
      };
      layers = [ imagePkgs.glibc ];
    };
  };
}
