"""Cities the synthetic bank operates in and travels to, and great-circle distances."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class City:
    name: str
    country: str
    lat: float
    lon: float
    # Relative population: how many customers and terminals a home city gets.
    weight: float
    home: bool


# The bank is German; customers live in these cities and use terminals there.
HOME_CITIES = (
    City("Berlin", "DE", 52.520008, 13.404954, 3.6, True),
    City("Hamburg", "DE", 53.551086, 9.993682, 1.9, True),
    City("München", "DE", 48.135125, 11.581981, 1.5, True),
    City("Köln", "DE", 50.937531, 6.960279, 1.1, True),
    City("Frankfurt am Main", "DE", 50.110922, 8.682127, 0.75, True),
    City("Stuttgart", "DE", 48.775846, 9.182932, 0.63, True),
    City("Düsseldorf", "DE", 51.227741, 6.773456, 0.62, True),
    City("Leipzig", "DE", 51.339695, 12.373075, 0.6, True),
    City("Dortmund", "DE", 51.513587, 7.465298, 0.59, True),
    City("Essen", "DE", 51.455643, 7.011555, 0.58, True),
    City("Bremen", "DE", 53.079296, 8.801694, 0.57, True),
    City("Dresden", "DE", 51.050409, 13.737262, 0.56, True),
    City("Hannover", "DE", 52.375892, 9.732010, 0.54, True),
    City("Nürnberg", "DE", 49.452030, 11.076750, 0.52, True),
)

# Far destinations (>= 1,500 km from every home city): legitimate travellers go there, and so do
# the account-takeover fraudsters, so a foreign terminal alone never gives fraud away.
FAR_CITIES = (
    City("New York", "US", 40.712776, -74.005974, 1.0, False),
    City("Bangkok", "TH", 13.756331, 100.501762, 1.0, False),
    City("Dubai", "AE", 25.204849, 55.270782, 1.0, False),
    City("Lagos", "NG", 6.524379, 3.379206, 1.0, False),
    City("São Paulo", "BR", -23.550520, -46.633308, 1.0, False),
    City("Istanbul", "TR", 41.008238, 28.978359, 1.0, False),
    City("Lisboa", "PT", 38.722252, -9.139337, 1.0, False),
    City("Cairo", "EG", 30.044420, 31.235712, 1.0, False),
    City("Mumbai", "IN", 19.075984, 72.877656, 1.0, False),
    City("Ciudad de México", "MX", 19.432608, -99.133209, 1.0, False),
    City("Tokyo", "JP", 35.676192, 139.650311, 1.0, False),
)

CITIES = HOME_CITIES + FAR_CITIES
N_HOME = len(HOME_CITIES)
CITY_LAT = np.array([c.lat for c in CITIES])
CITY_LON = np.array([c.lon for c in CITIES])
HOME_WEIGHTS = np.array([c.weight for c in HOME_CITIES]) / sum(c.weight for c in HOME_CITIES)
CITY_INDEX = {c.name: i for i, c in enumerate(CITIES)}

EARTH_RADIUS_KM = 6371.0


def haversine_km(
    lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray
) -> np.ndarray:
    """Great-circle distance in km between arrays of points given in degrees."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp = p2 - p1
    dl = np.radians(lon2) - np.radians(lon1)
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return np.asarray(2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(a)))
