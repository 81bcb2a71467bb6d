"""GalleryStore.find_images: which source images are already enrolled (for duplicates)."""

from __future__ import annotations

from pathlib import Path

from device.gallery.store import GalleryStore, NewIdentity
from tests.support.gallery import DIM, MODEL, FaceMaker


def test_find_images(tmp_path: Path) -> None:
    maker = FaceMaker(3)
    with GalleryStore(tmp_path / "g.db", model_id=MODEL, dim=DIM, create=True) as store:
        assert store.find_images([]) == {}
        faces = maker.faces(3)
        ada = store.add_identity_with_faces(NewIdentity(label="Ada"), faces)
        other = maker.face()
        wanted = [faces[0].image_sha256.upper(), faces[2].image_sha256, other.image_sha256]
        assert store.find_images(wanted) == {faces[0].image_sha256: ada.id,
                                             faces[2].image_sha256: ada.id}
        many = [maker.face().image_sha256 for _ in range(1200)] + [faces[1].image_sha256]
        assert store.find_images(many) == {faces[1].image_sha256: ada.id}  # > one SQL chunk
