"""Sets up what the AWS Batch adapter's tests need inside the moto emulator: an IAM role,
a Fargate compute environment, a job queue and a job definition (the harness does this with
boto3 so the Rust side needs no aws-sdk-iam). Prints shell `export` lines."""
import os

import boto3

kw = dict(endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ.get("AWS_REGION", "us-east-1"))
iam, batch, ec2 = boto3.client("iam", **kw), boto3.client("batch", **kw), boto3.client("ec2", **kw)
role = iam.create_role(RoleName="tamp-test-batch", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
group = ec2.describe_security_groups()["SecurityGroups"][0]["GroupId"]
ce = batch.create_compute_environment(computeEnvironmentName="tamp-test-cpu", type="MANAGED", state="ENABLED", serviceRole=role,
                                      computeResources={"type": "FARGATE", "maxvCpus": 4, "subnets": [subnet], "securityGroupIds": [group]})
batch.create_job_queue(jobQueueName="tamp-test-queue", state="ENABLED", priority=1,
                       computeEnvironmentOrder=[{"order": 1, "computeEnvironment": ce["computeEnvironmentArn"]}])
batch.register_job_definition(jobDefinitionName="tamp-test-worker", type="container", platformCapabilities=["FARGATE"],
                              containerProperties={"image": "tamp-worker:test", "command": ["worker"], "executionRoleArn": role,
                                                   "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "2048"}]})
print("export TAMP_TEST_BATCH_QUEUE=tamp-test-queue TAMP_TEST_BATCH_JOBDEF=tamp-test-worker")
