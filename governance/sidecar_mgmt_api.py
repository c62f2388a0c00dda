"""Management API for sidecars under /api/v1/sidecars/: list, register, rotate, revoke.

The same services as the UI. Viewers read; admin and security write (the
services re-check). A token appears once, in the response that created it.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from governance import services
from governance.bundles import bundle_current
from governance.models import Datasource, Sidecar, slug_validator
from governance.permissions import IsViewer


class SidecarSerializer(serializers.ModelSerializer):
    datasource = serializers.SlugRelatedField(slug_field="name", read_only=True)
    stale = serializers.SerializerMethodField()
    current_revision = serializers.SerializerMethodField()

    class Meta:
        model = Sidecar
        fields = [
            "id",
            "datasource",
            "name",
            "token_prefix",
            "created_at",
            "token_rotated_at",
            "revoked_at",
            "last_heartbeat_at",
            "running_revision",
            "current_revision",
            "version",
            "counters",
            "bundle_status",
            "stale",
        ]
        read_only_fields = fields

    def get_stale(self, obj: Sidecar) -> bool:
        return obj.revoked_at is None and obj.is_stale()

    def get_current_revision(self, obj: Sidecar) -> str | None:
        current = bundle_current(datasource_id=obj.datasource_id)
        return current[0] if current else None


class IssuedSidecarSerializer(SidecarSerializer):
    token = serializers.CharField(read_only=True, help_text="Shown once; only a digest is kept.")

    class Meta(SidecarSerializer.Meta):
        fields = [*SidecarSerializer.Meta.fields, "token"]
        read_only_fields = fields


class SidecarRegisterSerializer(serializers.Serializer):
    datasource = serializers.SlugRelatedField(slug_field="name", queryset=Datasource.objects.all())
    name = serializers.CharField(max_length=63, validators=[slug_validator])


def _issued(sidecar: Sidecar, raw: str, code: int) -> Response:
    sidecar.token = raw  # type: ignore[attr-defined]
    response = Response(IssuedSidecarSerializer(sidecar).data, status=code)
    response["Cache-Control"] = "no-store"
    return response


@extend_schema_view(
    list=extend_schema(tags=["sidecars"]),
    retrieve=extend_schema(tags=["sidecars"]),
    create=extend_schema(
        tags=["sidecars"],
        request=SidecarRegisterSerializer,
        responses={201: IssuedSidecarSerializer},
    ),
)
class SidecarViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    """Sidecars, what they last reported, and their tokens."""

    serializer_class = SidecarSerializer
    permission_classes = [IsViewer]

    def get_queryset(self) -> QuerySet:
        qs = Sidecar.objects.select_related("datasource").order_by("datasource__name", "name")
        datasource = self.request.query_params.get("datasource")
        return qs.filter(datasource__name=datasource) if datasource else qs

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        payload = SidecarRegisterSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        sidecar, raw = services.sidecar_register(actor=request.user, **payload.validated_data)
        return _issued(sidecar, raw, status.HTTP_201_CREATED)

    @extend_schema(tags=["sidecars"], request=None, responses={200: IssuedSidecarSerializer})
    @action(detail=True, methods=["post"])
    def rotate(self, request: Request, pk: str) -> Response:
        sidecar, raw = services.sidecar_rotate_token(actor=request.user, sidecar=self.get_object())
        return _issued(sidecar, raw, status.HTTP_200_OK)

    @extend_schema(tags=["sidecars"], request=None, responses={200: SidecarSerializer})
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str) -> Response:
        sidecar = services.sidecar_revoke(actor=request.user, sidecar=self.get_object())
        return Response(SidecarSerializer(sidecar).data)
