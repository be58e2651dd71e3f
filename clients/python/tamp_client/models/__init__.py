"""Contains all the data models used in inputs/outputs"""

from .create_job import CreateJob
from .create_job_prd import CreateJobPrd
from .create_token import CreateToken
from .job_constraints import JobConstraints
from .new_model import NewModel
from .new_model_prd import NewModelPrd
from .new_policy import NewPolicy
from .new_project import NewProject
from .new_version import NewVersion
from .problem_doc import ProblemDoc
from .validate_policy import ValidatePolicy

__all__ = (
    "CreateJob",
    "CreateJobPrd",
    "CreateToken",
    "JobConstraints",
    "NewModel",
    "NewModelPrd",
    "NewPolicy",
    "NewProject",
    "NewVersion",
    "ProblemDoc",
    "ValidatePolicy",
)
