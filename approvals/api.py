"""The approvals management API (DRF): thin views over approvals.services and selectors.

``/api/v1/approvals/`` lists the caller's reviewer inbox (``scope=inbox``, the
default; admin and reviewer roles) or their own requests (``scope=mine``, any
signed-in user); detail, approve, deny (with a reason) and cancel act on one
request; revoke ends its grant (its reviewers, an admin, the requester). A
request outside the caller's scope answers 404; a rule that forbids the action
(not a reviewer, self-approval, an agent's owner, a second approval by the same
reviewer) answers 403; an invalid decision (no reason, already decided, a grant
wider than the defaults) answers 400; revoking a grant already used up, expired
or revoked answers 409.
``/api/v1/review-settings/`` holds each datasource's routing, timing, hold time,
grant binding and values retention (admin and security write).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from django.http import Http404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_field,
    extend_schema_view,
)
from rest_framework import mixins, serializers, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response

from approvals import selectors, services
from approvals.models import ApprovalRequest, ApprovalState, Grant, ReviewSettings
from governance.api import _ERRORS, ErrorSerializer, by_name
from governance.errors import ApplicationError
from governance.models import Datasource, IdentityKind, Team
from governance.permissions import IsPolicyEditorOrReadOnly, can_edit_policy, user_role


class IsSignedIn(BasePermission):
    """Any active signed-in user: requesters need not hold a role to follow their requests."""

    message = "Sign in first."

    def has_permission(self, request: Request, view: Any) -> bool:
        return bool(request.user and request.user.is_authenticated and request.user.is_active)


# --- serializers ---------------------------------------------------------------------------


class GrantSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    uses_total = serializers.IntegerField()
    uses_left = serializers.IntegerField()
    expires_at = serializers.DateTimeField()
    state = serializers.CharField()
    # Blank: any values of the statement's shape; else only the approved values.
    values_digest = serializers.CharField()
    revoked_at = serializers.DateTimeField(allow_null=True)
    revoked_by = serializers.SerializerMethodField()

    def get_revoked_by(self, obj: Grant) -> str | None:
        return obj.revoked_by.get_username() if obj.revoked_by else None


class DecisionSerializer(serializers.Serializer):
    reviewer = serializers.CharField(source="reviewer.username")
    approve = serializers.BooleanField()
    reason = serializers.CharField()
    uses = serializers.IntegerField(allow_null=True)
    grant_expires_at = serializers.DateTimeField(allow_null=True)
    at = serializers.DateTimeField()


class TimelineEntrySerializer(serializers.Serializer):
    at = serializers.DateTimeField()
    kind = serializers.CharField()
    label = serializers.CharField()
    actor = serializers.CharField()
    detail = serializers.JSONField()


class ApprovalSerializer(serializers.ModelSerializer):
    datasource = serializers.CharField(source="datasource.name")
    environment = serializers.CharField(source="datasource.environment.name")
    identity = serializers.CharField(source="identity.name")
    identity_kind = serializers.CharField(source="identity.kind")
    owner = serializers.SerializerMethodField()
    approvals = serializers.SerializerMethodField()
    denied_by = serializers.SerializerMethodField()
    url = serializers.SerializerMethodField()
    grant = serializers.SerializerMethodField()

    class Meta:
        model = ApprovalRequest
        fields = [
            "id",
            "datasource",
            "environment",
            "identity",
            "identity_kind",
            "owner",
            "fingerprint",
            "statement",
            "kind",
            "risk",
            "reasons",
            "tables",
            "classifications",
            "client_addr",
            "application_name",
            "state",
            "required_approvals",
            "approvals",
            "created_at",
            "decided_at",
            "expires_at",
            "escalated_at",
            "deny_reason",
            "denied_by",
            "url",
            "binding",
            "values_digest",
            "values",
            "values_purged_at",
            "estimate",
            "grant",
        ]
        read_only_fields = fields

    def get_owner(self, obj: ApprovalRequest) -> str | None:
        return obj.identity.owner.name if obj.identity.owner_id else None

    def get_approvals(self, obj: ApprovalRequest) -> int:
        return sum(1 for d in obj.decisions.all() if d.approve)

    def get_denied_by(self, obj: ApprovalRequest) -> str | None:
        return obj.denied_by.get_username() if obj.denied_by else None

    def get_url(self, obj: ApprovalRequest) -> str:
        request = self.context.get("request")
        base = request.build_absolute_uri("/") if request is not None else None
        return services.approval_url(obj.id, base=base)

    @extend_schema_field(GrantSerializer(allow_null=True))
    def get_grant(self, obj: ApprovalRequest) -> dict[str, Any] | None:
        grant = getattr(obj, "grant", None) if obj.state == ApprovalState.APPROVED else None
        return GrantSerializer(grant).data if grant is not None else None


class ApprovalDetailSerializer(ApprovalSerializer):
    decisions = DecisionSerializer(many=True, read_only=True)
    timeline = serializers.SerializerMethodField()

    class Meta(ApprovalSerializer.Meta):
        fields = [*ApprovalSerializer.Meta.fields, "decisions", "timeline"]
        read_only_fields = fields

    def get_timeline(self, obj: ApprovalRequest) -> list[dict[str, Any]]:
        entries = selectors.approval_timeline(request=obj)
        return list(TimelineEntrySerializer(entries, many=True).data)


class ApproveSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, max_length=2000, default="")
    uses = serializers.IntegerField(required=False, allow_null=True, default=None)
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)


class DenySerializer(serializers.Serializer):
    # Blank is let through so the service, the one place the rule lives, refuses it.
    reason = serializers.CharField(allow_blank=True, max_length=2000)


# --- views ---------------------------------------------------------------------------------


def _query(name: str, description: str) -> OpenApiParameter:
    return OpenApiParameter(name, OpenApiTypes.STR, OpenApiParameter.QUERY, description=description)


@extend_schema_view(
    list=extend_schema(
        tags=["approvals"],
        parameters=[
            _query("scope", "inbox (default: requests you review) or mine (your own)."),
            _query(
                "state",
                "pending (default for the inbox), approved, denied, expired, cancelled, or all.",
            ),
            _query("datasource", "Datasource name."),
            _query("environment", "Environment name."),
            _query("identity_kind", "human, service or agent."),
            _query("q", "Search identity, datasource and statement."),
        ],
    ),
    retrieve=extend_schema(
        tags=["approvals"], responses={200: ApprovalDetailSerializer, **_ERRORS}
    ),
)
class ApprovalViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Approval requests: the reviewer inbox, the requester's own, and decisions."""

    serializer_class = ApprovalSerializer
    permission_classes = [IsSignedIn]
    lookup_value_regex = "[^/]+"

    def get_queryset(self) -> QuerySet:
        params = self.request.query_params
        # PostgreSQL cannot even compare text holding NUL: a 400, not a 500 from the filter.
        for name, value in params.items():
            if "\x00" in value:
                raise serializers.ValidationError({name: ["NUL characters are not allowed."]})
        scope = params.get("scope", "inbox")
        state = params.get("state")
        if scope == "mine":
            qs = selectors.approvals_of_requester(user=self.request.user, state=state or "all")
        elif scope == "inbox":
            if user_role(self.request.user) not in services.REVIEWER_ROLES:
                raise PermissionDenied("Only reviewers and admins have an inbox.")
            kind = params.get("identity_kind") or None
            if kind is not None and kind not in IdentityKind.values:
                raise serializers.ValidationError({"identity_kind": ["Unknown identity kind."]})
            if state and state != "all" and state not in ApprovalState.values:
                raise serializers.ValidationError({"state": ["Unknown state."]})
            qs = selectors.approvals_inbox(
                user=self.request.user,
                state=state or ApprovalState.PENDING,
                datasource=params.get("datasource") or None,
                environment=params.get("environment") or None,
                identity_kind=kind,
                q=params.get("q") or None,
            )
        else:
            raise serializers.ValidationError({"scope": ["Use inbox or mine."]})
        return qs.select_related("grant").prefetch_related("decisions")

    def get_object(self) -> ApprovalRequest:
        return selectors.approval_visible(user=self.request.user, request_id=self.kwargs["pk"])

    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        obj = self.get_object()
        return Response(ApprovalDetailSerializer(obj, context={"request": request}).data)

    def _reviewed(self, pk: str) -> ApprovalRequest:
        if user_role(self.request.user) not in services.REVIEWER_ROLES:
            raise PermissionDenied("Your role does not allow deciding approvals.")
        # Another team's request is invisible (404); the service then applies the rules.
        return selectors.approval_visible(user=self.request.user, request_id=pk)

    def _detail(self, request: Request, pk: Any) -> Response:
        obj = selectors.approval_visible(user=request.user, request_id=pk)
        return Response(ApprovalDetailSerializer(obj, context={"request": request}).data)

    @extend_schema(
        tags=["approvals"],
        request=ApproveSerializer,
        responses={200: ApprovalDetailSerializer, **_ERRORS},
    )
    @action(detail=True, methods=["post"])
    def approve(self, request: Request, pk: str) -> Response:
        target = self._reviewed(pk)
        data = ApproveSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.approval_decide(
            request_id=target.pk,
            user=request.user,
            approve=True,
            reason=data.validated_data["reason"],
            uses=data.validated_data["uses"],
            expires_at=data.validated_data["expires_at"],
        )
        return self._detail(request, target.pk)

    @extend_schema(
        tags=["approvals"],
        request=DenySerializer,
        responses={200: ApprovalDetailSerializer, **_ERRORS},
    )
    @action(detail=True, methods=["post"])
    def deny(self, request: Request, pk: str) -> Response:
        target = self._reviewed(pk)
        data = DenySerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.approval_decide(
            request_id=target.pk,
            user=request.user,
            approve=False,
            reason=data.validated_data["reason"],
        )
        return self._detail(request, target.pk)

    @extend_schema(
        tags=["approvals"], request=None, responses={200: ApprovalDetailSerializer, **_ERRORS}
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        target = self.get_object()
        services.approval_cancel(request_id=target.pk, user=request.user)
        return self._detail(request, target.pk)

    @extend_schema(
        tags=["approvals"],
        request=None,
        responses={200: ApprovalDetailSerializer, 409: ErrorSerializer, **_ERRORS},
    )
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str) -> Response:
        """End the request's active grant now (its reviewers, an admin, the requester)."""
        target = self.get_object()
        try:
            services.grant_revoke(request_id=target.pk, user=request.user)
        except DjangoValidationError as exc:
            # Nothing wrong with what was sent: the grant is no longer there to revoke.
            raise ApplicationError(" ".join(exc.messages), {"status": 409}) from exc
        return self._detail(request, target.pk)


def _hold_seconds_field() -> serializers.IntegerField:
    most = settings.WARDEN_APPROVAL_MAX_HOLD_SECONDS
    message = (
        f"From 1 to {most} seconds: a sidecar holds a statement at most {most} s "
        "(WARDEN_APPROVAL_MAX_HOLD_SECONDS)."
    )
    return serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=most,
        error_messages={"min_value": message, "max_value": message},
        help_text=f"Seconds a sidecar holds a statement for a decision (1-{most}); "
        "null: WARDEN_APPROVAL_HOLD_SECONDS.",
    )


class ReviewSettingsSerializer(serializers.ModelSerializer):
    datasource = serializers.CharField(source="datasource.name", read_only=True)
    fallback_team = by_name(Team.objects.all(), "slug", "team", allow_null=True, required=False)
    values_retention_seconds = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=services.MIN_VALUES_RETENTION_SECONDS,
        max_value=2**31 - 1,
        help_text="Seconds a decided request keeps its values; null: "
        "WARDEN_APPROVAL_VALUES_RETENTION_SECONDS.",
    )

    class Meta:
        model = ReviewSettings
        fields = ["datasource", *services.REVIEW_SETTINGS_FIELDS, "updated_at"]
        read_only_fields = ["datasource", "updated_at"]

    def get_fields(self) -> dict[str, Any]:
        fields = super().get_fields()
        # Built per call: the maximum comes from settings.
        fields["hold_seconds"] = _hold_seconds_field()
        return fields

    def to_representation(self, instance: ReviewSettings) -> dict[str, Any]:
        data = super().to_representation(instance)
        request = self.context.get("request")
        if "webhook_url" in data and not can_edit_policy(getattr(request, "user", None)):
            # An incoming-webhook URL is a bearer secret: whoever has it can post
            # approval notices into the reviewers' channel. Shown to those who set it
            # (as the settings page is), said to be set to everyone else.
            data["webhook_url"] = "(set)" if data["webhook_url"] else ""
        return data


@extend_schema_view(
    list=extend_schema(tags=["approvals"]),
    retrieve=extend_schema(tags=["approvals"]),
    update=extend_schema(tags=["approvals"], responses={200: ReviewSettingsSerializer, **_ERRORS}),
    partial_update=extend_schema(
        tags=["approvals"], responses={200: ReviewSettingsSerializer, **_ERRORS}
    ),
)
class ReviewSettingsViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.UpdateModelMixin,
    viewsets.GenericViewSet,
):
    """Per-datasource review settings, addressed by datasource name; a PUT creates them.
    Empty durations fall back to the WARDEN_APPROVAL_* settings."""

    serializer_class = ReviewSettingsSerializer
    permission_classes = [IsPolicyEditorOrReadOnly]
    lookup_field = "datasource"
    lookup_value_regex = "[^/]+"

    def get_queryset(self) -> QuerySet:
        return ReviewSettings.objects.select_related("datasource", "fallback_team").order_by(
            "datasource__name"
        )

    def _datasource(self) -> Datasource:
        datasource = Datasource.objects.filter(name=self.kwargs["datasource"]).first()
        if datasource is None:
            raise Http404("No such datasource.")
        return datasource

    def get_object(self) -> ReviewSettings:
        datasource = self._datasource()
        row = ReviewSettings.objects.filter(datasource=datasource).first()
        return row or ReviewSettings(datasource=datasource)

    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        row = self.get_object()
        partial = kwargs.get("partial", False)
        serializer = self.get_serializer(row, data=request.data, partial=partial)
        serializer.is_valid(raise_exception=True)
        saved = services.review_settings_set(
            actor=request.user, datasource=row.datasource, data=dict(serializer.validated_data)
        )
        return Response(self.get_serializer(saved).data)
