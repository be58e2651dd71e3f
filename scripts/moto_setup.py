"""Sets up what the AWS Batch adapter's tests need inside the moto emulator: an IAM role,
a Fargate compute environment, the CPU and GPU job queues and their job definitions (the harness does this with
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
# The GPU lane: a queue and job definition of its own (on a second Fargate environment here:
# the tests check which queue a stage is routed to, and moto runs no container either way).
gce = batch.create_compute_environment(computeEnvironmentName="tamp-test-gpu", type="MANAGED", state="ENABLED", serviceRole=role,
                                       computeResources={"type": "FARGATE", "maxvCpus": 4, "subnets": [subnet], "securityGroupIds": [group]})
batch.create_job_queue(jobQueueName="tamp-test-gpu-queue", state="ENABLED", priority=1,
                       computeEnvironmentOrder=[{"order": 1, "computeEnvironment": gce["computeEnvironmentArn"]}])
batch.register_job_definition(jobDefinitionName="tamp-test-worker-gpu", type="container", platformCapabilities=["FARGATE"],
                              containerProperties={"image": "tamp-worker:gpu-test", "command": ["worker"], "executionRoleArn": role,
                                                   "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "2048"}]})
print("export TAMP_TEST_BATCH_QUEUE=tamp-test-queue TAMP_TEST_BATCH_JOBDEF=tamp-test-worker "
      "TAMP_TEST_BATCH_GPU_QUEUE=tamp-test-gpu-queue TAMP_TEST_BATCH_GPU_JOBDEF=tamp-test-worker-gpu")
