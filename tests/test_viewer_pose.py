"""Poses in the viewer's frame (`Avatar.pose_frame`): yaw 0 looks at the person watching, however
far off the camera's axis the capture put the head."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.camera import Camera
from engine.controls import update
from engine.head.default import build_default_head
from engine.head.model import pose_rotation
from engine.render.avatar import Avatar
from engine.render.frame_inputs import angles_from_rotation, facing_rotation, seen_rotation
from engine.render.networks import PRESETS

# A crop's camera: the principal point off the picture's centre, as the talking clip's (0.375).
CROP_CAMERA = Camera(fx=1.2, fy=1.2, cx=0.375, cy=0.38)


def test_a_head_on_the_axis_needs_no_turn_and_one_off_it_turns_to_the_camera() -> None:
    on_axis = facing_rotation(torch.tensor([0.0, 0.0, -30.0]), CROP_CAMERA)
    torch.testing.assert_close(on_axis, torch.eye(3), atol=1e-6, rtol=0)
    centres = torch.tensor([[4.0, -3.0, -30.0], [-6.0, 2.0, -40.0]])
    turned = facing_rotation(centres, CROP_CAMERA)  # (2, 3, 3)
    forward = turned @ torch.tensor([0.0, 0.0, 1.0])  # the head's +z, in the world
    torch.testing.assert_close(forward, -centres / centres.norm(dim=1, keepdim=True))
    assert float(angles_from_rotation(turned)[:, 2].abs().max()) < 1e-4  # no roll
    # What the camera sees of a head turned to face it: no turn at all.
    seen = seen_rotation(turned, centres, CROP_CAMERA)
    torch.testing.assert_close(seen, torch.eye(3).expand(2, 3, 3), atol=1e-6, rtol=0)


def _avatar(pose_frame: str | None) -> Avatar:
    summary = {} if pose_frame is None else {"pose_frame": pose_frame}
    translation = torch.tensor([3.0, -2.0, -28.0])  # off the axis, as the talking clip's head
    return Avatar(PRESETS["tiny"], build_default_head(), CROP_CAMERA, translation, summary)


def test_served_poses_are_the_viewers_where_the_avatar_says_so() -> None:
    viewer, camera = _avatar("viewer"), _avatar(None)
    assert viewer.pose_frame == "viewer" and camera.pose_frame == "camera"
    rest = viewer.rest
    with torch.no_grad():
        looking = viewer.inputs([rest]).view_dir[0]
        aside = camera.inputs([rest]).view_dir[0]
        turned = viewer.inputs([update(rest, viewer.expression_names, pose={"yaw": 20.0})])
    # At rest the viewer's avatar looks at the camera (the camera straight ahead of its face);
    # the camera's avatar looks down the axis, past the viewer.
    torch.testing.assert_close(looking, torch.tensor([0.0, 0.0, 1.0]), atol=0.02, rtol=0)
    assert float(aside[:2].norm()) > 0.05
    # The networks read the world's angles they were trained on: the facing turn included.
    facing = viewer.facing()
    assert facing is not None and camera.facing() is None
    e = len(viewer.expression_names)
    yawed = facing @ pose_rotation(torch.tensor(20.0), torch.tensor(0.0), torch.tensor(0.0))
    expected = angles_from_rotation(yawed[None])[0, :3] / 45.0
    torch.testing.assert_close(turned.controls[0, e : e + 3], expected, atol=1e-4, rtol=0)


def test_an_unknown_pose_frame_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sideways.pt"
    _avatar("sideways").save(path)
    with pytest.raises(ValueError, match=r"damaged avatar file.*pose_frame.*sideways"):
        Avatar.load(path)
