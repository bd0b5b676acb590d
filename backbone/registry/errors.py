"""Registry API errors with Confluent's error codes and HTTP statuses."""

from __future__ import annotations

from backbone.errors import BackboneError

SUBJECT_NOT_FOUND = 40401
VERSION_NOT_FOUND = 40402
SCHEMA_NOT_FOUND = 40403
SUBJECT_SOFT_DELETED = 40404
SUBJECT_NOT_SOFT_DELETED = 40405
VERSION_SOFT_DELETED = 40406
VERSION_NOT_SOFT_DELETED = 40407
SUBJECT_CONFIG_NOT_FOUND = 40408
INCOMPATIBLE = 409
INVALID_SCHEMA = 42201
INVALID_VERSION = 42202
INVALID_COMPATIBILITY_LEVEL = 42203
INVALID_MODE = 42204
OPERATION_NOT_PERMITTED = 42205
REFERENCE_EXISTS = 42206
NOT_ACCEPTABLE = 406
UNAUTHORIZED = 40101
FORBIDDEN = 40301
STORE_ERROR = 50001
REALM = "backbone-registry"


class ApiError(BackboneError):
    """An error answer: HTTP `status`, Confluent `error_code` and a message without schema content."""

    def __init__(self, status: int, error_code: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, object]:
        return {"error_code": self.error_code, "message": self.message}


def subject_not_found(subject: str) -> ApiError:
    return ApiError(404, SUBJECT_NOT_FOUND, f"Subject '{subject}' not found.")


def version_not_found(subject: str, version: object) -> ApiError:
    return ApiError(404, VERSION_NOT_FOUND, f"Version {version} not found for subject '{subject}'.")


def schema_not_found(detail: str = "Schema not found") -> ApiError:
    return ApiError(404, SCHEMA_NOT_FOUND, detail)


def invalid_schema(detail: str) -> ApiError:
    return ApiError(422, INVALID_SCHEMA, f"Invalid schema: {detail}")


def invalid_version(version: object) -> ApiError:
    return ApiError(
        422, INVALID_VERSION,
        f"The specified version '{version}' is not a valid version id. "
        "Allowed values are between [1, 2^31-1] and the string \"latest\"",
    )


def invalid_level(level: object) -> ApiError:
    return ApiError(422, INVALID_COMPATIBILITY_LEVEL, f"Invalid compatibility level: {level}")


def store_error(detail: str) -> ApiError:
    return ApiError(500, STORE_ERROR, f"Error in the backend data store: {detail}")


def unauthorized(detail: str) -> ApiError:
    """401 with the Basic challenge; `detail` never quotes what the client sent."""
    return ApiError(401, UNAUTHORIZED, detail, {"WWW-Authenticate": f'Basic realm="{REALM}"'})


def forbidden(detail: str) -> ApiError:
    return ApiError(403, FORBIDDEN, detail)


def read_only(what: str) -> ApiError:
    return ApiError(
        422, OPERATION_NOT_PERMITTED,
        f"{what} refused: the registry is in READONLY mode; an admin can PUT /mode {{\"mode\": \"READWRITE\"}}",
    )


def invalid_mode(mode: object) -> ApiError:
    return ApiError(422, INVALID_MODE, f"Invalid mode: {str(mode)[:40]}; one of READWRITE, READONLY")


class UsersFileError(BackboneError):
    """The registry's users file is missing, unreadable or invalid; the message names the file and the setting."""
