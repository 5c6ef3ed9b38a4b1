"""Push the SageMaker image and create a real-time endpoint, or print the exact commands.

    python -m deployment.aws_sagemaker.deploy [--bundle DIR] --aws-account-id ID \
        --region REGION --role-arn ARN [--instance-type ml.m5.large] [--name NAME] [--image-tag TAG]

Run from the checkout, on the bundle `cloud_setup.sh aws_sagemaker` built. The execution role
and instance type come from the options or from SAGEMAKER_ROLE_ARN and SAGEMAKER_INSTANCE_TYPE. It acts only with an explicit
--aws-account-id, a region, a role and a Docker engine that answers; otherwise it prints the
commands and exits 0. The model is baked into the image: no model.tar.gz, no S3 bucket.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from deployment.aws_deploy import (
    REGION_PLACEHOLDER,
    Step,
    add_bundle_option,
    add_image_options,
    image_uri,
    missing_for_running,
    push_steps,
    run_or_print,
)

PROVIDER = "aws_sagemaker"
DEFAULT_NAME = "ml-project"
DEFAULT_INSTANCE_TYPE = "ml.m5.large"


def steps(args: argparse.Namespace) -> list[Step]:
    """Push, then model -> endpoint config -> endpoint (create, or update if it exists)."""
    version = f"{args.name}-{args.image_tag}-{time.strftime('%Y%m%d%H%M%S')}"
    region = ["--region", args.region or REGION_PLACEHOLDER]
    container = json.dumps({"Image": image_uri(args), "Mode": "SingleModel"})
    variant = json.dumps([{"VariantName": "AllTraffic", "ModelName": version,
                           "InitialInstanceCount": 1, "InstanceType": args.instance_type}])
    create_or_update = "update-endpoint" if args.update else "create-endpoint"
    return [
        *push_steps(args.bundle, args),
        Step(["aws", "sagemaker", "create-model", "--model-name", version,
              "--primary-container", container, "--execution-role-arn",
              args.role_arn or "YOUR_EXECUTION_ROLE_ARN", *region]),
        Step(["aws", "sagemaker", "create-endpoint-config", "--endpoint-config-name", version,
              "--production-variants", variant, *region]),
        Step(["aws", "sagemaker", create_or_update, "--endpoint-name", args.name,
              "--endpoint-config-name", version, *region]),
        Step(["aws", "sagemaker", "wait", "endpoint-in-service", "--endpoint-name", args.name,
              *region]),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_bundle_option(parser, PROVIDER)
    add_image_options(parser, DEFAULT_NAME)
    parser.add_argument("--role-arn", default=os.environ.get("SAGEMAKER_ROLE_ARN"),
                        help="execution role SageMaker assumes (default: $SAGEMAKER_ROLE_ARN)")
    parser.add_argument("--instance-type", default=os.environ.get("SAGEMAKER_INSTANCE_TYPE")
                        or DEFAULT_INSTANCE_TYPE,
                        help="default: $SAGEMAKER_INSTANCE_TYPE, else %(default)s")
    parser.add_argument("--update", action="store_true",
                        help="the endpoint exists: switch it to the new image")
    args = parser.parse_args(argv)
    reasons = missing_for_running(args)
    if not args.role_arn:
        reasons.insert(0, "no --role-arn (or SAGEMAKER_ROLE_ARN) given")
    return run_or_print(steps(args), reasons, "SageMaker deployment")


if __name__ == "__main__":
    sys.exit(main())
