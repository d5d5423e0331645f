{
  description = "Container images built by strata";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    flake-parts.url = "github:hercules-ci/flake-parts";
    flake-parts.inputs.nixpkgs-lib.follows = "nixpkgs";
    strata.url = "github:strata-oci/strata";
    strata.inputs.nixpkgs.follows = "nixpkgs";
  };

  outputs = inputs@{ flake-parts, nixpkgs, strata, ... }:
    flake-parts.lib.mkFlake { inherit inputs; } {
      imports = [ strata.flakeModules.default ];
      systems = [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ];

      perSystem = { system, ... }: {
        # What flake-parts would derive from inputs'.nixpkgs, set here so Nix < 2.13 works too.
        _module.args.pkgs = nixpkgs.legacyPackages.${system};

        # nix run .#strata.<system>.images.hello.do.run.interactivelyWithPodman
        strata.images.hello = { imagePkgs, ... }: {
          imageConfig.entrypoint = [ "${imagePkgs.hello}/bin/hello" ];
        };
      };
    };
}
