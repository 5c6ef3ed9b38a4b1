"""Push the Lambda image and create the function with Terraform, or print the exact commands.

    python -m deployment.aws_lambda.deploy [--bundle DIR] --aws-account-id ID --region REGION [--name NAME] [--image-tag TAG]

Run from the checkout, on the bundle `cloud_setup.sh aws_lambda` built (which runs it with its
own options). It acts
only with an explicit --aws-account-id, a region and a Docker engine that answers; otherwise
it prints the commands and exits 0. The account id is never written to a file.
"""

from __future__ import annotations

import argparse
import sys

from deployment.aws_deploy import (
    REGION_PLACEHOLDER,
    Step,
    add_bundle_option,
    add_image_options,
    missing_for_running,
    push_steps,
    run_or_print,
)

PROVIDER = "aws_lambda"
DEFAULT_NAME = "ml-project"


def steps(args: argparse.Namespace) -> list[Step]:
    """Terraform creates the repository first (it owns it), then the image is pushed, then
    Terraform creates the function from it."""
    terraform = ["terraform", f"-chdir={args.bundle}"]
    variables = ["-var", f"region={args.region or REGION_PLACEHOLDER}", "-var",
                 f"function_name={args.name}"]
    return [
        Step([*terraform, "init"]),
        Step([*terraform, "apply", "-target=aws_ecr_repository.serving", *variables]),
        *push_steps(args.bundle, args, create_repository=False),
        Step([*terraform, "apply", *variables, "-var", f"image_tag={args.image_tag}"]),
        Step([*terraform, "output", "function_url"]),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_bundle_option(parser, PROVIDER)
    add_image_options(parser, DEFAULT_NAME)
    args = parser.parse_args(argv)
    return run_or_print(steps(args), missing_for_running(args), "Lambda deployment")


if __name__ == "__main__":
    sys.exit(main())
