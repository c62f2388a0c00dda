"""The management REST API (DRF): thin views over the same services and selectors as the UI.

Every endpoint authenticates with an API token (``Authorization: Token wda_…``,
stored only as a SHA-256 digest) or the browser session (with CSRF). Lists are
paginated and filtered with the selectors' query parameters; related objects
are referred to by their natural names (team slug, classification name,
environment name, identity name, datasource name). Every error has the shape
``{"error": {"code", "message", "fields"}}`` (see ``governance.errors``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import QuerySet
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_view,
    inline_serializer,
)
from rest_framework import exceptions, mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from audit.models import ChangeRecord
from audit.sink.history import change_history_for
from governance import selectors, services, simulator
from governance.models import (
    STATEMENT_KINDS,
    AccessToken,
    ApiToken,
    BreakGlassGrant,
    BreakGlassState,
    Classification,
    ColumnClassification,
    CustomDetector,
    Datasource,
    Environment,
    FloorRule,
    GuardrailRule,
    Identity,
    MaskingRule,
    ScanRun,
    ScanSchedule,
    Team,
    strategy_params_help,
)
from governance.permissions import IsAdminOrReadOnly, IsPolicyEditorOrReadOnly, IsViewer
from governance.services.policy import REASON_MAX_LENGTH


class ApiTokenScheme(OpenApiAuthenticationExtension):
    target_class = "governance.authentication.ApiTokenAuthentication"
    name = "ApiToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Token wda_…` (mint one with `manage.py mint_api_token <username>`).",
        }


# --- serializer helpers --------------------------------------------------------------------


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


class JSONObjectField(serializers.JSONField):
    """A JSON object; PostgreSQL's jsonb cannot store NUL characters, so refuse them here."""

    def to_internal_value(self, data: Any) -> Any:
        value = super().to_internal_value(data)
        if not isinstance(value, dict):
            raise serializers.ValidationError("Must be a JSON object.")
        if _has_nul(value):
            raise serializers.ValidationError("NUL characters are not allowed.")
        return value


class NameRelatedField(serializers.SlugRelatedField):
    """SlugRelatedField that refuses NUL (PostgreSQL cannot even compare text holding one)."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, str) and "\x00" in data:
            self.fail("does_not_exist", slug_name=self.slug_field, value=data.replace("\x00", ""))
        return super().to_internal_value(data)


def by_name(
    queryset: QuerySet, field: str, label: str, *, many: bool = False, **kwargs: Any
) -> serializers.SlugRelatedField:
    """A relation written and read as the related object's natural name."""
    return NameRelatedField(
        slug_field=field,
        queryset=queryset,
        many=many,
        error_messages={"does_not_exist": f"Unknown {label} '{{value}}'."},
        **kwargs,
    )


# --- serializers ---------------------------------------------------------------------------


REASON_HELP = (
    "Why (kept in the configuration history and the policy.change audit event, for good: "
    "do not include personal data). Required when the change touches the protection of a "
    'production datasource (docs/api.md, "Changes that weaken production").'
)


def _reason_field() -> serializers.CharField:
    return serializers.CharField(
        write_only=True,
        required=False,
        allow_blank=True,
        max_length=REASON_MAX_LENGTH,
        help_text=REASON_HELP,
    )


class EnvironmentSerializer(serializers.ModelSerializer):
    reason = _reason_field()

    class Meta:
        model = Environment
        fields = ["id", "name", "criticality", "description", "protect_threshold", "reason"]
        # Seeded; only the protect threshold is a setting.
        read_only_fields = ["id", "name", "criticality", "description"]


class TeamSerializer(serializers.ModelSerializer):
    slug = serializers.CharField(
        max_length=64, required=False, help_text="Derived from the name when omitted."
    )

    class Meta:
        model = Team
        fields = ["id", "name", "slug", "description", "created_at", "updated_at"]
        read_only_fields = ["created_at", "updated_at"]


class IdentitySerializer(serializers.ModelSerializer):
    owner = by_name(Identity.objects.all(), "name", "identity", required=False, allow_null=True)
    teams = by_name(Team.objects.all(), "slug", "team", many=True, required=False)
    user = by_name(
        get_user_model().objects.all(), "username", "user", required=False, allow_null=True
    )

    class Meta:
        model = Identity
        fields = [
            "id",
            "name",
            "kind",
            "display_name",
            "email",
            "user",
            "owner",
            "teams",
            "is_active",
            "expires_at",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]


class AccessTokenSerializer(serializers.ModelSerializer):
    identity = serializers.SlugRelatedField(slug_field="name", read_only=True)
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    is_active = serializers.BooleanField(read_only=True)

    class Meta:
        model = AccessToken
        fields = [
            "id",
            "identity",
            "name",
            "prefix",
            "created_at",
            "created_by",
            "expires_at",
            "revoked_at",
            "last_used_at",
            "is_active",
        ]
        read_only_fields = fields


class TokenIssueSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    expires_at = serializers.DateTimeField(required=False, allow_null=True)


class IssuedAccessTokenSerializer(AccessTokenSerializer):
    token = serializers.CharField(read_only=True, help_text="Shown once; store it now.")

    class Meta(AccessTokenSerializer.Meta):
        fields = [*AccessTokenSerializer.Meta.fields, "token"]
        read_only_fields = fields


class ApiTokenSerializer(serializers.ModelSerializer):
    user = serializers.SlugRelatedField(slug_field="username", read_only=True)
    is_active = serializers.BooleanField(read_only=True)

    class Meta:
        model = ApiToken
        fields = [
            "id",
            "user",
            "name",
            "prefix",
            "created_at",
            "expires_at",
            "revoked_at",
            "last_used_at",
            "is_active",
        ]
        read_only_fields = fields


class IssuedApiTokenSerializer(ApiTokenSerializer):
    token = serializers.CharField(read_only=True, help_text="Shown once; store it now.")

    class Meta(ApiTokenSerializer.Meta):
        fields = [*ApiTokenSerializer.Meta.fields, "token"]
        read_only_fields = fields


class DatasourceSerializer(serializers.ModelSerializer):
    environment = by_name(Environment.objects.all(), "name", "environment")
    connect_teams = by_name(Team.objects.all(), "slug", "team", many=True, required=False)
    review_teams = by_name(Team.objects.all(), "slug", "team", many=True, required=False)
    schema_snapshot = JSONObjectField(required=False)
    reason = _reason_field()

    class Meta:
        model = Datasource
        fields = [
            "id",
            "name",
            "engine",
            "dialect",
            "environment",
            "description",
            "schema_snapshot",
            "connect_teams",
            "review_teams",
            "mask_services_provisionally",
            "reason",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]

    def validate_schema_snapshot(self, value: Any) -> Any:
        from django.core.exceptions import ValidationError as DjangoValidationError

        from governance.models import validate_schema_snapshot

        try:
            validate_schema_snapshot(value)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages) from exc
        return value


class ClassificationSerializer(serializers.ModelSerializer):
    class Meta:
        model = Classification
        fields = ["id", "name", "level", "description", "is_builtin", "created_at", "updated_at"]
        read_only_fields = ["is_builtin", "created_at", "updated_at"]


class ColumnClassificationSerializer(serializers.ModelSerializer):
    datasource = by_name(Datasource.objects.all(), "name", "datasource")
    classification = by_name(Classification.objects.all(), "name", "classification")
    confirmed_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    reason = _reason_field()

    class Meta:
        model = ColumnClassification
        fields = [
            "id",
            "datasource",
            "schema_name",
            "table_name",
            "column_name",
            "path",
            "classification",
            "source",
            "confidence",
            "status",
            "confirmed_by",
            "confirmed_at",
            "reason",
            "created_at",
            "updated_at",
        ]
        # A path inside a JSON or array column comes from the scanner; a person
        # classifies whole columns here (and reviews, reclassifies or rejects paths).
        read_only_fields = [
            "path",
            "status",
            "confirmed_by",
            "confirmed_at",
            "created_at",
            "updated_at",
        ]
        # Setting a classification on an already classified column replaces it
        # (column_classification_set), so the uniqueness check must not refuse it.
        validators: list = []


class ReasonSerializer(serializers.Serializer):
    reason = _reason_field()


def _json_body(request: Request) -> dict[str, Any]:
    """The JSON object a request carries, {} when it has none (a bare POST or DELETE,
    which these actions have always accepted)."""
    try:
        data = request.data
    except exceptions.UnsupportedMediaType:
        return {}
    return data if isinstance(data, dict) else {}


class MaskingRuleSerializer(serializers.ModelSerializer):
    classification = by_name(Classification.objects.all(), "name", "classification")
    exempt_teams = by_name(Team.objects.all(), "slug", "team", many=True, required=False)
    params = JSONObjectField(required=False, help_text=strategy_params_help())
    environments = serializers.ListField(
        child=serializers.CharField(max_length=32), required=False, max_length=50
    )
    reason = _reason_field()

    class Meta:
        model = MaskingRule
        fields = [
            "id",
            "name",
            "classification",
            "strategy",
            "params",
            "exempt_teams",
            "environments",
            "enabled",
            "reason",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]


class GuardrailSerializer(serializers.ModelSerializer):
    datasource = by_name(
        Datasource.objects.all(), "name", "datasource", required=False, allow_null=True
    )
    conditions = JSONObjectField(
        required=False,
        help_text="Lists (empty = any): environments, identity_kinds, teams, statement_kinds, "
        "tables, classifications, functions. Flags (true/false/null = either): missing_where, "
        "unbounded_classified_read, multi_statement, unparseable. statement_kinds names: "
        + ", ".join(STATEMENT_KINDS)
        + ".",
    )
    position = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=1_000_000,
        help_text="1 = evaluated first. On creation: where to insert it (default: last).",
    )
    reason = _reason_field()

    class Meta:
        model = GuardrailRule
        fields = [
            "id",
            "name",
            "position",
            "enabled",
            "conditions",
            "action",
            "message",
            "datasource",
            "reason",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]


class GuardrailMoveSerializer(serializers.Serializer):
    position = serializers.IntegerField(required=False, min_value=1, max_value=1_000_000)
    direction = serializers.ChoiceField(choices=["up", "down"], required=False)
    reason = _reason_field()

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("position" in attrs) == ("direction" in attrs):
            raise serializers.ValidationError("Give either a position or a direction.")
        return attrs


class GuardrailOrderSerializer(serializers.Serializer):
    order = serializers.ListField(
        child=serializers.IntegerField(min_value=1),
        max_length=10_000,
        help_text="Every guardrail's id, once, first evaluated first.",
    )
    reason = _reason_field()


class ChangeRecordSerializer(serializers.ModelSerializer):
    class Meta:
        model = ChangeRecord
        fields = [
            "id",
            "at",
            "actor_name",
            "request_id",
            "action",
            "object_repr",
            "before",
            "after",
            "reason",
        ]
        read_only_fields = fields


# --- viewsets ------------------------------------------------------------------------------

ErrorSerializer = inline_serializer(
    "Error",
    {
        "error": inline_serializer(
            "ErrorBody",
            {
                "code": serializers.CharField(),
                "message": serializers.CharField(),
                "fields": serializers.DictField(child=serializers.ListField()),
            },
        )
    },
)
_ERRORS = {code: ErrorSerializer for code in (400, 401, 403, 404, 405)}


def _query(name: str, description: str, type_: Any = OpenApiTypes.STR) -> OpenApiParameter:
    return OpenApiParameter(name, type_, OpenApiParameter.QUERY, description=description)


Q_PARAM = _query("q", "Search in names.")


class PolicyViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """CRUD over one policy object through its selectors and services.

    Subclasses name the selectors, the services and the service's keyword for
    the object (``team=...``); the viewset only translates HTTP.
    """

    list_selector: Callable[..., QuerySet]
    get_selector: Callable[..., Any]
    create_service: Callable[..., Any]
    update_service: Callable[..., Any]
    delete_service: Callable[..., Any]
    object_kwarg: str
    read_only_on_update: tuple[str, ...] = ()
    # Services that may weaken production protection take a ``reason`` (docs/api.md):
    # on update and delete, and on create when ``create_takes_reason``.
    takes_reason = False
    create_takes_reason = False

    def get_queryset(self) -> QuerySet:
        return type(self).list_selector(user=self.request.user, filters=self.request.query_params)

    def get_object(self) -> Any:
        obj = type(self).get_selector(user=self.request.user, pk=self.kwargs["pk"])
        self.check_object_permissions(self.request, obj)
        return obj

    def perform_create(self, serializer: serializers.Serializer) -> None:
        data = dict(serializer.validated_data)
        reason = data.pop("reason", "")
        if self.create_takes_reason:
            data["reason"] = reason
        serializer.instance = type(self).create_service(actor=self.request.user, **data)

    def perform_update(self, serializer: serializers.Serializer) -> None:
        data = {
            k: v for k, v in serializer.validated_data.items() if k not in self.read_only_on_update
        }
        reason = data.pop("reason", "")
        extra = {"reason": reason} if self.takes_reason else {}
        serializer.instance = type(self).update_service(
            actor=self.request.user, **{self.object_kwarg: serializer.instance}, data=data, **extra
        )

    def perform_destroy(self, instance: Any) -> None:
        extra = {"reason": self._delete_reason()} if self.takes_reason else {}
        type(self).delete_service(actor=self.request.user, **{self.object_kwarg: instance}, **extra)

    def _delete_reason(self) -> str:
        """DELETE's reason: ``{"reason": ...}`` in the JSON body. Not a query parameter,
        which proxies and access logs keep."""
        reason = _json_body(self.request).get("reason") or ""
        if not isinstance(reason, str):
            raise serializers.ValidationError({"reason": ["Must be text."]})
        return reason

    @extend_schema(responses={200: ChangeRecordSerializer(many=True), **_ERRORS})
    @action(detail=True, methods=["get"])
    def history(self, request: Request, pk: str) -> Response:
        """Configuration history of this object: who changed what, when, from what to what."""
        obj = self.get_object()
        page = self.paginate_queryset(change_history_for(obj))
        return self.get_paginated_response(ChangeRecordSerializer(page, many=True).data)


def _crud_schema(
    tag: str, filters: list[OpenApiParameter], *, reason: bool = False
) -> Callable[[type], type]:
    return extend_schema_view(
        list=extend_schema(tags=[tag], parameters=[Q_PARAM, *filters]),
        retrieve=extend_schema(tags=[tag]),
        create=extend_schema(tags=[tag]),
        update=extend_schema(tags=[tag]),
        partial_update=extend_schema(tags=[tag]),
        destroy=extend_schema(tags=[tag], request=ReasonSerializer if reason else None),
        history=extend_schema(tags=[tag]),
    )


@_crud_schema("teams", [])
class TeamViewSet(PolicyViewSet):
    serializer_class = TeamSerializer
    list_selector = selectors.team_list
    get_selector = selectors.team_get
    create_service = services.team_create
    update_service = services.team_update
    delete_service = services.team_delete
    object_kwarg = "team"


@_crud_schema(
    "identities",
    [
        _query("kind", "human, service or agent."),
        _query("team", "Team slug."),
        _query("is_active", "true or false.", OpenApiTypes.BOOL),
        _query("owner", "Owner's identity name."),
    ],
)
class IdentityViewSet(PolicyViewSet):
    serializer_class = IdentitySerializer
    list_selector = selectors.identity_list
    get_selector = selectors.identity_get
    create_service = services.identity_create
    update_service = services.identity_update
    delete_service = services.identity_delete
    object_kwarg = "identity"

    @extend_schema(
        tags=["tokens"],
        request=TokenIssueSerializer,
        responses={200: AccessTokenSerializer(many=True), 201: IssuedAccessTokenSerializer},
    )
    @action(detail=True, methods=["get", "post"], permission_classes=[IsViewer])
    def tokens(self, request: Request, pk: str) -> Response:
        """GET: this identity's access tokens. POST: issue one (the raw token is shown once)."""
        identity = selectors.identity_for_tokens_get(user=request.user, pk=pk)
        if request.method == "GET":
            qs = selectors.token_list(user=request.user, filters={"identity": str(identity.pk)})
            page = self.paginate_queryset(qs)
            return self.get_paginated_response(AccessTokenSerializer(page, many=True).data)
        payload = TokenIssueSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        token, raw = services.token_issue(
            actor=request.user, identity=identity, **payload.validated_data
        )
        token.token = raw  # type: ignore[attr-defined]
        return Response(IssuedAccessTokenSerializer(token).data, status=status.HTTP_201_CREATED)


@extend_schema_view(
    list=extend_schema(
        tags=["tokens"],
        parameters=[
            _query("identity", "Identity id.", OpenApiTypes.INT),
            _query("active", "true: usable now; false: revoked or expired.", OpenApiTypes.BOOL),
        ],
    ),
    retrieve=extend_schema(tags=["tokens"]),
)
class AccessTokenViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Identity access tokens in the caller's scope (see governance.permissions)."""

    serializer_class = AccessTokenSerializer
    permission_classes = [IsViewer]

    def get_queryset(self) -> QuerySet:
        return selectors.token_list(user=self.request.user, filters=self.request.query_params)

    def get_object(self) -> AccessToken:
        return selectors.token_get(user=self.request.user, pk=self.kwargs["pk"])

    @extend_schema(tags=["tokens"], request=None, responses={200: AccessTokenSerializer, **_ERRORS})
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str) -> Response:
        token = services.token_revoke(actor=request.user, token=self.get_object())
        return Response(AccessTokenSerializer(token).data)


@extend_schema_view(
    list=extend_schema(tags=["api-tokens"], parameters=[_query("user", "Username (admins).")]),
    retrieve=extend_schema(tags=["api-tokens"]),
    create=extend_schema(
        tags=["api-tokens"],
        request=TokenIssueSerializer,
        responses={201: IssuedApiTokenSerializer, **_ERRORS},
    ),
)
class ApiTokenViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    """Your management-API tokens (admins see everyone's)."""

    serializer_class = ApiTokenSerializer
    permission_classes = [IsViewer]

    def get_queryset(self) -> QuerySet:
        return selectors.api_token_list(user=self.request.user, filters=self.request.query_params)

    def get_object(self) -> ApiToken:
        return selectors.api_token_get(user=self.request.user, pk=self.kwargs["pk"])

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        payload = TokenIssueSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        token, raw = services.api_token_issue(actor=request.user, **payload.validated_data)
        token.token = raw  # type: ignore[attr-defined]
        return Response(IssuedApiTokenSerializer(token).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        tags=["api-tokens"], request=None, responses={200: ApiTokenSerializer, **_ERRORS}
    )
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str) -> Response:
        token = services.api_token_revoke(actor=request.user, token=self.get_object())
        return Response(ApiTokenSerializer(token).data)


@extend_schema_view(
    list=extend_schema(tags=["datasources"]),
    retrieve=extend_schema(tags=["datasources"]),
    partial_update=extend_schema(tags=["datasources"]),
)
class EnvironmentViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.UpdateModelMixin,
    viewsets.GenericViewSet,
):
    """Environments (seeded: production, staging, sandbox), their criticality and their
    protect threshold: scanner findings at or above it are masked before anyone
    reviews them (null: only confirmed and confident ones, as in a sandbox). Policy
    editors may PATCH ``protect_threshold``; the other fields are seeded."""

    serializer_class = EnvironmentSerializer
    permission_classes = [IsPolicyEditorOrReadOnly]
    http_method_names = ["get", "patch", "head", "options"]

    def get_queryset(self) -> QuerySet:
        return selectors.environment_list(user=self.request.user)

    def perform_update(self, serializer: serializers.Serializer) -> None:
        data = dict(serializer.validated_data)
        reason = data.pop("reason", "")
        serializer.instance = services.environment_update(
            actor=self.request.user, environment=serializer.instance, data=data, reason=reason
        )


@_crud_schema(
    "datasources",
    [_query("environment", "Environment name."), _query("team", "Team slug (connect or review).")],
    reason=True,
)
class DatasourceViewSet(PolicyViewSet):
    serializer_class = DatasourceSerializer
    list_selector = selectors.datasource_list
    get_selector = selectors.datasource_get
    create_service = services.datasource_create
    update_service = services.datasource_update
    delete_service = services.datasource_delete
    object_kwarg = "datasource"
    takes_reason = True


@_crud_schema(
    "classifications",
    [
        _query("level", "public, internal, confidential or restricted."),
        _query("is_builtin", "", OpenApiTypes.BOOL),
    ],
)
class ClassificationViewSet(PolicyViewSet):
    serializer_class = ClassificationSerializer
    list_selector = selectors.classification_list
    get_selector = selectors.classification_get
    create_service = services.classification_create
    update_service = services.classification_update
    delete_service = services.classification_delete
    object_kwarg = "classification"


def _column_set(*, actor: Any, **data: Any) -> ColumnClassification:
    return services.column_classification_set(actor=actor, **data)


def _column_update(
    *, actor: Any, column_classification: ColumnClassification, data: dict, reason: str = ""
) -> Any:
    # The column itself is fixed; what changes is its classification (and source).
    return services.column_classification_set(
        actor=actor,
        datasource=column_classification.datasource,
        schema_name=column_classification.schema_name,
        table_name=column_classification.table_name,
        column_name=column_classification.column_name,
        path=column_classification.path,
        classification=data.get("classification", column_classification.classification),
        source=data.get("source", column_classification.source),
        confidence=data.get("confidence", column_classification.confidence),
        reason=reason,
    )


@_crud_schema(
    "column-classifications",
    [
        _query("datasource", "Datasource id.", OpenApiTypes.INT),
        _query("classification", "Classification name."),
        _query("status", "proposed, confirmed or rejected."),
        _query("source", "auto or manual."),
    ],
    reason=True,
)
class ColumnClassificationViewSet(PolicyViewSet):
    """Classify a column: POST replaces any earlier classification of the same column."""

    serializer_class = ColumnClassificationSerializer
    list_selector = selectors.column_classification_list
    get_selector = selectors.column_classification_get
    create_service = _column_set
    update_service = _column_update
    delete_service = services.column_classification_delete
    object_kwarg = "column_classification"
    read_only_on_update = ("datasource", "schema_name", "table_name", "column_name")
    takes_reason = True
    create_takes_reason = True  # a POST replaces the column's classification


@_crud_schema(
    "masking-rules",
    [
        _query("classification", "Classification name."),
        _query("strategy", "redact, partial, email, hash, null or year_only."),
        _query("enabled", "", OpenApiTypes.BOOL),
        _query("environment", "Rules that apply in this environment."),
    ],
    reason=True,
)
class MaskingRuleViewSet(PolicyViewSet):
    serializer_class = MaskingRuleSerializer
    list_selector = selectors.masking_rule_list
    get_selector = selectors.masking_rule_get
    create_service = services.masking_rule_create
    update_service = services.masking_rule_update
    delete_service = services.masking_rule_delete
    object_kwarg = "rule"
    takes_reason = True


@_crud_schema(
    "guardrails",
    [
        _query("action", "allow, review or block."),
        _query("enabled", "", OpenApiTypes.BOOL),
        _query("datasource", "Datasource id.", OpenApiTypes.INT),
    ],
    reason=True,
)
class GuardrailViewSet(PolicyViewSet):
    """Guardrails in evaluation order; change the order with ``order`` (all at once)
    or ``move`` (one guardrail)."""

    serializer_class = GuardrailSerializer
    list_selector = selectors.guardrail_list
    get_selector = selectors.guardrail_get
    create_service = services.guardrail_create
    update_service = services.guardrail_update
    delete_service = services.guardrail_delete
    object_kwarg = "guardrail"
    read_only_on_update = ("position",)
    takes_reason = True
    create_takes_reason = True  # inserted above a production guardrail

    def _toggle(self, request: Request, enabled: bool) -> Response:
        guardrail = self.get_object()
        payload = ReasonSerializer(data=_json_body(request))
        payload.is_valid(raise_exception=True)
        guardrail = services.guardrail_set_enabled(
            actor=request.user,
            guardrail=guardrail,
            enabled=enabled,
            reason=payload.validated_data.get("reason", ""),
        )
        return Response(GuardrailSerializer(guardrail).data)

    @extend_schema(
        tags=["guardrails"],
        request=ReasonSerializer,
        responses={200: GuardrailSerializer, **_ERRORS},
    )
    @action(detail=True, methods=["post"])
    def enable(self, request: Request, pk: str) -> Response:
        return self._toggle(request, True)

    @extend_schema(
        tags=["guardrails"],
        request=ReasonSerializer,
        responses={200: GuardrailSerializer, **_ERRORS},
    )
    @action(detail=True, methods=["post"])
    def disable(self, request: Request, pk: str) -> Response:
        """Disable; ``{"reason": ...}`` is required when it applies to production."""
        return self._toggle(request, False)

    @extend_schema(
        tags=["guardrails"],
        request=GuardrailOrderSerializer,
        responses={200: GuardrailSerializer(many=True), **_ERRORS},
    )
    @action(detail=False, methods=["post"])
    def order(self, request: Request) -> Response:
        """Reorder every guardrail at once: ``{"order": [ids]}``, each id once. One
        change in the configuration history, whatever number of rows moved."""
        payload = GuardrailOrderSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        ordered = services.guardrail_reorder(
            actor=request.user,
            order=payload.validated_data["order"],
            reason=payload.validated_data.get("reason", ""),
        )
        return Response(GuardrailSerializer(ordered, many=True).data)

    @extend_schema(
        tags=["guardrails"],
        request=GuardrailMoveSerializer,
        responses={200: GuardrailSerializer, **_ERRORS},
    )
    @action(detail=True, methods=["post"])
    def move(self, request: Request, pk: str) -> Response:
        """Move to ``position`` (1 = first) or one step ``direction`` up/down."""
        guardrail = self.get_object()
        payload = GuardrailMoveSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        moved = services.guardrail_move(
            actor=request.user, guardrail=guardrail, **payload.validated_data
        )
        moved.refresh_from_db()
        return Response(GuardrailSerializer(moved).data)


# --- simulator -----------------------------------------------------------------------------


class SimulateSerializer(serializers.Serializer):
    datasource = by_name(Datasource.objects.all(), "name", "datasource")
    identity = serializers.CharField(max_length=150)
    sql = serializers.CharField(max_length=simulator.MAX_SQL_LENGTH, trim_whitespace=False)
    include_disabled_guardrail = by_name(
        GuardrailRule.objects.all(),
        "name",
        "guardrail",
        required=False,
        allow_null=True,
        help_text="A guardrail (by name) to treat as enabled for this simulation.",
    )
    draft_guardrail = JSONObjectField(
        required=False,
        allow_null=True,
        help_text="An unsaved guardrail {name, action, conditions, message}, evaluated last.",
    )


SimulationSerializer = inline_serializer(
    "Simulation",
    {
        "decision": serializers.DictField(help_text="Decision JSON (docs/bundle-format.md)."),
        "notes": serializers.ListField(child=serializers.CharField()),
        "tried": serializers.ListField(child=serializers.CharField()),
    },
)


class SimulateView(APIView):
    """What the sidecar would decide for ``identity`` sending ``sql`` to ``datasource``.

    Any viewer role may simulate: the answer reveals policy, not data. Nothing
    is stored; the SQL is neither saved nor logged.
    """

    permission_classes = [IsViewer]

    @extend_schema(
        tags=["simulate"],
        request=SimulateSerializer,
        responses={200: SimulationSerializer, **_ERRORS},
    )
    def post(self, request: Request) -> Response:
        payload = SimulateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        # Resolve through the selector so the caller's visibility rules apply.
        datasource = selectors.datasource_get(user=request.user, pk=data["datasource"].pk)
        guardrail = data.get("include_disabled_guardrail")
        result = simulator.policy_simulate(
            user=request.user,
            datasource=datasource,
            identity_name=data["identity"],
            sql=data["sql"],
            include_disabled_guardrail=guardrail.pk if guardrail is not None else None,
            draft_guardrail=data.get("draft_guardrail"),
        )
        return Response(result)


# --- classification scans -------------------------------------------------------------------


class CustomDetectorSerializer(serializers.ModelSerializer):
    classification = by_name(Classification.objects.all(), "name", "classification")
    name_regex = serializers.CharField(required=False, allow_blank=True, allow_null=True)
    value_regex = serializers.CharField(required=False, allow_blank=True, allow_null=True)

    class Meta:
        model = CustomDetector
        fields = [
            "id",
            "name",
            "classification",
            "confidence",
            "name_regex",
            "value_regex",
            "enabled",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]

    def to_representation(self, instance: Any) -> Any:
        data = super().to_representation(instance)
        # As in the bundle: an absent pattern is null.
        for key in ("name_regex", "value_regex"):
            data[key] = data[key] or None
        return data


@_crud_schema(
    "detectors",
    [_query("classification", "Classification name."), _query("enabled", "", OpenApiTypes.BOOL)],
)
class CustomDetectorViewSet(PolicyViewSet):
    """Custom detectors compiled into every bundle (``detectors``). Patterns are checked
    like the form checks them: they compile, are short enough, and do not backtrack
    catastrophically."""

    serializer_class = CustomDetectorSerializer
    list_selector = selectors.custom_detector_list
    get_selector = selectors.custom_detector_get
    create_service = services.custom_detector_create
    update_service = services.custom_detector_update
    delete_service = services.custom_detector_delete
    object_kwarg = "detector"


class ScanRunSerializer(serializers.ModelSerializer):
    class Meta:
        model = ScanRun
        fields = [
            "id",
            "scan_id",
            "trigger",
            "started_at",
            "finished_at",
            "received_at",
            "duration_ms",
            "tables",
            "columns",
            "sampled_columns",
            "findings",
            "proposed",
            "auto_applied",
            "inherited",
            "drift",
        ]


class ScanRequestView(APIView):
    """``POST datasources/<id>/scan``: "Scan now". ``GET``: recent scans with counts."""

    permission_classes = [IsViewer]

    @extend_schema(tags=["scans"], responses={200: ScanRunSerializer(many=True), **_ERRORS})
    def get(self, request: Request, pk: str) -> Response:
        datasource = selectors.datasource_get(user=request.user, pk=pk)
        page = self.paginate_queryset(
            selectors.scan_run_list(user=request.user, datasource=datasource)
        )
        return self.get_paginated_response(ScanRunSerializer(page, many=True).data)

    @extend_schema(
        tags=["scans"],
        request=None,
        responses={
            202: inline_serializer("ScanRequested", {"requested": serializers.CharField()}),
            **_ERRORS,
        },
    )
    def post(self, request: Request, pk: str) -> Response:
        datasource = selectors.datasource_get(user=request.user, pk=pk)
        schedule = services.scan_request(actor=request.user, datasource=datasource)
        return Response({"requested": schedule.requested}, status=status.HTTP_202_ACCEPTED)

    @property
    def paginator(self) -> Any:
        from rest_framework.settings import api_settings

        if not hasattr(self, "_paginator"):
            self._paginator = api_settings.DEFAULT_PAGINATION_CLASS()
        return self._paginator

    def paginate_queryset(self, queryset: QuerySet) -> Any:
        return self.paginator.paginate_queryset(queryset, self.request, view=self)

    def get_paginated_response(self, data: Any) -> Response:
        return self.paginator.get_paginated_response(data)


class ReviewDecisionSerializer(serializers.Serializer):
    decision = serializers.ChoiceField(choices=["confirm", "reject", "reclassify"])
    classification = by_name(Classification.objects.all(), "name", "classification", required=False)
    reason = _reason_field()


class ReviewDecisionView(APIView):
    """``POST column-classifications/<id>/decide``: confirm, reject or reclassify."""

    permission_classes = [IsViewer]

    @extend_schema(
        tags=["column-classifications"],
        request=ReviewDecisionSerializer,
        responses={200: ColumnClassificationSerializer, **_ERRORS},
    )
    def post(self, request: Request, pk: str) -> Response:
        column = selectors.column_classification_get(user=request.user, pk=pk)
        serializer = ReviewDecisionSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        decision = serializer.validated_data["decision"]
        if decision == "reclassify":
            classification = serializer.validated_data.get("classification")
            if classification is None:
                raise serializers.ValidationError({"classification": "Required to reclassify."})
            column = services.column_classification_reclassify(
                actor=request.user,
                column_classification=column,
                classification=classification,
                reason=serializer.validated_data.get("reason", ""),
            )
        else:
            status_ = "confirmed" if decision == "confirm" else "rejected"
            column = services.column_classification_review(
                actor=request.user,
                column_classification=column,
                status=status_,
                reason=serializer.validated_data.get("reason", ""),
            )
        return Response(ColumnClassificationSerializer(column).data)


class ScanScheduleSerializer(serializers.ModelSerializer):
    class Meta:
        model = ScanSchedule
        fields = ["interval_seconds", "sample_rows", "statement_timeout_ms", "requested"]
        read_only_fields = ["requested"]


class ScanScheduleView(APIView):
    """``datasources/<id>/scan-schedule/``: GET the schedule, PATCH its settings."""

    permission_classes = [IsViewer]

    @extend_schema(tags=["scans"], responses={200: ScanScheduleSerializer, **_ERRORS})
    def get(self, request: Request, pk: str) -> Response:
        datasource = selectors.datasource_get(user=request.user, pk=pk)
        return Response(
            ScanScheduleSerializer(selectors.scan_schedule_get(datasource=datasource)).data
        )

    @extend_schema(
        tags=["scans"],
        request=ScanScheduleSerializer,
        responses={200: ScanScheduleSerializer, **_ERRORS},
    )
    def patch(self, request: Request, pk: str) -> Response:
        datasource = selectors.datasource_get(user=request.user, pk=pk)
        serializer = ScanScheduleSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        schedule = services.scan_schedule_update(
            actor=request.user, datasource=datasource, data=serializer.validated_data
        )
        return Response(ScanScheduleSerializer(schedule).data)


# --- break-glass grants ---------------------------------------------------------------------


class BreakGlassSerializer(serializers.ModelSerializer):
    datasource = by_name(Datasource.objects.all(), "name", "datasource")
    identity = by_name(Identity.objects.all(), "name", "identity")
    rules = serializers.ListField(
        child=serializers.ChoiceField(choices=FloorRule.choices),
        min_length=1,
        max_length=len(FloorRule.values),
        help_text="Safety-floor rule ids to lift: " + ", ".join(FloorRule.values) + ".",
    )
    reason = serializers.CharField(max_length=5000)
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    approved_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    denied_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    revoked_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    in_force = serializers.BooleanField(source="is_in_force", read_only=True)

    class Meta:
        model = BreakGlassGrant
        fields = [
            "id",
            "datasource",
            "identity",
            "rules",
            "reason",
            "expires_at",
            "state",
            "in_force",
            "created_by",
            "created_at",
            "approved_by",
            "approved_at",
            "denied_by",
            "denied_at",
            "revoked_by",
            "revoked_at",
        ]
        read_only_fields = [
            "state",
            "created_at",
            "approved_at",
            "denied_at",
            "revoked_at",
        ]


_GRANT_ACTION = extend_schema(
    tags=["break-glass"], request=None, responses={200: BreakGlassSerializer, **_ERRORS}
)


@extend_schema_view(
    list=extend_schema(
        tags=["break-glass"],
        parameters=[
            Q_PARAM,
            _query("datasource", "Datasource id.", OpenApiTypes.INT),
            _query("state", ", ".join(BreakGlassState.values) + "."),
            _query("identity", "Identity name."),
        ],
    ),
    retrieve=extend_schema(tags=["break-glass"]),
    create=extend_schema(tags=["break-glass"], responses={201: BreakGlassSerializer, **_ERRORS}),
    history=extend_schema(tags=["break-glass"]),
)
class BreakGlassViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    """Break-glass grants: any viewer reads them; admins make, approve, deny and revoke.

    In production a grant is ``pending`` until a second admin (not its maker)
    approves it; elsewhere it is ``active`` at once. Grants are never edited or
    deleted: revoke one and make another.
    """

    serializer_class = BreakGlassSerializer
    permission_classes = [IsAdminOrReadOnly]

    def get_queryset(self) -> QuerySet:
        return selectors.break_glass_list(user=self.request.user, filters=self.request.query_params)

    def get_object(self) -> BreakGlassGrant:
        return selectors.break_glass_get(user=self.request.user, pk=self.kwargs["pk"])

    def perform_create(self, serializer: serializers.Serializer) -> None:
        data = dict(serializer.validated_data)
        # Resolve through the selector so the caller's visibility rules apply.
        data["datasource"] = selectors.datasource_get(
            user=self.request.user, pk=data["datasource"].pk
        )
        serializer.instance = services.break_glass_create(actor=self.request.user, **data)

    def _act(self, service: Callable[..., BreakGlassGrant]) -> Response:
        grant = service(actor=self.request.user, grant=self.get_object())
        return Response(BreakGlassSerializer(grant).data)

    @_GRANT_ACTION
    @action(detail=True, methods=["post"])
    def approve(self, request: Request, pk: str) -> Response:
        """A second admin puts a pending grant in force (its maker may not: 403)."""
        return self._act(services.break_glass_approve)

    @_GRANT_ACTION
    @action(detail=True, methods=["post"])
    def deny(self, request: Request, pk: str) -> Response:
        """A second admin refuses a pending grant (its maker may not: 403)."""
        return self._act(services.break_glass_deny)

    @_GRANT_ACTION
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str) -> Response:
        """End a pending or active grant now."""
        return self._act(services.break_glass_revoke)

    @extend_schema(responses={200: ChangeRecordSerializer(many=True), **_ERRORS})
    @action(detail=True, methods=["get"])
    def history(self, request: Request, pk: str) -> Response:
        """Configuration history of this grant: who made, approved, denied or revoked it."""
        page = self.paginate_queryset(change_history_for(self.get_object()))
        return self.get_paginated_response(ChangeRecordSerializer(page, many=True).data)
