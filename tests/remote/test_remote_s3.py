"""Remote scenes in S3: a real S3 API on loopback (moto's server, in a child process).

Credentials, region and endpoint come from the standard AWS environment variables or from the
setting ``s3_endpoint_url``; GDAL reads them itself. ``AWS_NO_SIGN_REQUEST`` reads a public
object. moto checks no signature and no ACL unless its auth mode is on; in that mode it refuses
an anonymous read of a private object (tested), but moto 5.2 answers an anonymous read of a
public-read object with a 500 (a moto bug), so the public read is tested without auth mode.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.remote.conftest import AWS_KEYS, MotoServer
from zoomearth.cli import main
from zoomearth.geometry import PixelBox
from zoomearth.scene import Scene
from zoomearth.scene.remote import RemoteAccessError, RemoteNotFoundError


def test_s3_cog_with_endpoint_from_settings(moto_server, remote_files, remote_settings, aws_env):
    for name, value in AWS_KEYS.items():
        aws_env.setenv(name, value)
    remote_settings.s3_endpoint_url = moto_server.endpoint
    with Scene.open("s3://cogs/scenes/cog.tif", settings=remote_settings) as scene:
        assert scene.is_remote and scene.source == "s3://cogs/scenes/cog.tif"
        assert scene.gdal_path == "/vsis3/cogs/scenes/cog.tif"
        assert scene.file_size == (remote_files / "cog.tif").stat().st_size
        assert scene.remote_stat is not None and scene.remote_stat.etag
        box = PixelBox(1024, 1024, 1536, 1536)
        overview, zoom = scene.render(None, max_side=256), scene.render(box, max_side=None)
    with Scene.open(remote_files / "cog.tif", settings=remote_settings) as local:
        np.testing.assert_array_equal(overview.rgb, local.render(None, max_side=256).rgb)
        np.testing.assert_array_equal(zoom.rgb, local.render(box, max_side=None).rgb)


def test_s3_endpoint_from_the_aws_environment(moto_server, aws_env, capsys, tmp_path):
    for name, value in AWS_KEYS.items():
        aws_env.setenv(name, value)
    aws_env.setenv("AWS_ENDPOINT_URL", moto_server.endpoint)
    aws_env.setenv("ZOOMEARTH_CACHE_DIR", str(tmp_path / "cache"))
    aws_env.setenv("ZOOMEARTH_DATA_DIR", str(tmp_path / "data"))
    assert main(["info", "s3://cogs/scenes/cog.tif", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["path"] == "s3://cogs/scenes/cog.tif" and info["width"] == 4096
    assert main(["info", "s3://cogs/scenes/missing.tif"]) == 2
    err = capsys.readouterr().err
    assert "No such remote image: s3://cogs/scenes/missing.tif" in err and err.count("\n") == 1


def test_missing_key_and_bucket_are_not_found(moto_server, remote_settings, aws_env):
    for name, value in AWS_KEYS.items():
        aws_env.setenv(name, value)
    remote_settings.s3_endpoint_url = moto_server.endpoint
    for url in ("s3://cogs/nope.tif", "s3://no-such-bucket/a.tif"):
        with pytest.raises(RemoteNotFoundError, match="No such remote image"):
            Scene.open(url, settings=remote_settings)


def test_public_object_without_credentials(moto_server, remote_settings, aws_env):
    aws_env.setenv("AWS_NO_SIGN_REQUEST", "YES")
    remote_settings.s3_endpoint_url = moto_server.endpoint
    with Scene.open("s3://cogs/public/cog.tif", settings=remote_settings) as scene:
        assert scene.width == 1024
        assert scene.render(None, max_side=128).rgb.shape == (128, 128, 3)


def test_anonymous_read_of_a_private_object_is_refused(remote_files, remote_settings, aws_env):
    # moto's auth mode: the first 4 requests are free (they make the user and the bucket).
    server = MotoServer({"INITIAL_NO_AUTH_ACTION_COUNT": "4"})
    try:
        iam = server.client("iam")
        iam.create_user(UserName="writer")
        key = iam.create_access_key(UserName="writer")["AccessKey"]
        iam.put_user_policy(UserName="writer", PolicyName="all", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
        }))
        keys = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        s3 = server.client(**keys)
        s3.create_bucket(Bucket="private")
        s3.upload_file(str(remote_files / "sub" / "small.tif"), "private", "a.tif")
        remote_settings.s3_endpoint_url = server.endpoint
        aws_env.setenv("AWS_NO_SIGN_REQUEST", "YES")
        with pytest.raises(RemoteAccessError, match=r"refused \(HTTP 403.*AWS_ACCESS_KEY_ID"):
            Scene.open("s3://private/a.tif", settings=remote_settings)
        aws_env.delenv("AWS_NO_SIGN_REQUEST")
        for name, value in keys.items():
            aws_env.setenv(name, value)
        with Scene.open("s3://private/a.tif", settings=remote_settings) as scene:
            assert scene.width == 1024
    finally:
        server.stop()
