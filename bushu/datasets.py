"""Real evaluation data that needs no download: what the quantize tests and benchmarks score models on.

* :func:`digits` — scikit-learn's 8x8 handwritten digits, a fixed train/test split.
* :func:`text_lines` — words and numbers rendered with Debian's DejaVu fonts into PP-OCRv4 rec's ``1x3x48xW`` input,
  preprocessed exactly as rapidocr does; :func:`ppocr_decode` is rapidocr's CTC greedy decode.
* :func:`sentences` — sentences on several topics, written for bushu, for sentence-embedding models (MiniLM).
* :func:`photos` — scikit-image's sample photographs as ``HxWx3`` uint8 arrays; :func:`text_scenes` pastes
  rendered lines on them, for text detection.

Every function is deterministic for a given seed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import BushuError, require

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONTS = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Bold.ttf", "DejaVuSansCondensed.ttf")
REC_HEIGHT = 48
REC_MIN_WIDTH = 320  # rapidocr's rec_image_shape is 3x48x320: narrower lines are padded to it


def digits(test_fraction: float = 0.25, seed: int = 0):
    """scikit-learn's digits as ``(x_train, y_train, x_test, y_test)``; x is ``Nx1x8x8`` float32 in [0, 1]."""
    datasets = require("sklearn.datasets", extra="zoo", feature="the digits data set")
    d = datasets.load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


@dataclasses.dataclass(frozen=True)
class TextLine:
    """One rendered line: the model input ``x`` (1x3x48xW float32) and the text it shows."""

    text: str
    x: np.ndarray


_WORDS = (
    "model engine tensor deploy latency server batch kernel graph layer weight scale invoice total amount date "
    "street river market station ticket coffee garden window paper letter number order receipt price office "
    "north south morning evening water bridge school library museum hotel airport train coast valley"
).split()


def _line_text(rng: np.random.Generator) -> str:
    parts = []
    for _ in range(int(rng.integers(1, 4))):
        kind = rng.random()
        if kind < 0.55:
            w = _WORDS[int(rng.integers(len(_WORDS)))]
            parts.append(w.capitalize() if rng.random() < 0.3 else w)
        elif kind < 0.8:
            parts.append(str(int(rng.integers(0, 100000))))
        else:
            parts.append(f"{rng.integers(0, 1000)}.{rng.integers(0, 100):02d}")
    return " ".join(parts)


def rec_preprocess(image: np.ndarray, width: int | None = None) -> np.ndarray:
    """rapidocr's ``resize_norm_img`` for one ``HxWx3`` uint8 image: resize to height 48 keeping the aspect ratio,
    ``(x/255 - 0.5)/0.5``, zero-pad to ``width`` (default: ``max(320, resized width)``) → ``1x3x48xW`` float32."""
    from PIL import Image

    h, w = image.shape[:2]
    resized_w = int(math.ceil(REC_HEIGHT * w / h))
    width = width or max(REC_MIN_WIDTH, resized_w)
    resized_w = min(resized_w, width)
    img = np.asarray(Image.fromarray(image).resize((resized_w, REC_HEIGHT), Image.BILINEAR), dtype=np.float32)
    img = (img.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    out = np.zeros((1, 3, REC_HEIGHT, width), np.float32)
    out[0, :, :, :resized_w] = img
    return out


def render_line(text: str, font: str = FONTS[0], size: int = 32, *, ink=(0, 0, 0), paper=(255, 255, 255),
                margin: int = 6) -> np.ndarray:
    """``text`` drawn in ``font`` from :data:`FONT_DIR` as an ``HxWx3`` uint8 image tightly around the text."""
    from PIL import Image, ImageDraw, ImageFont

    path = FONT_DIR / font
    if not path.is_file():
        raise BushuError(f"font {path} is missing: apt-get install fonts-dejavu-core")
    f = ImageFont.truetype(str(path), size)
    left, top, right, bottom = f.getbbox(text)
    img = Image.new("RGB", (right - left + 2 * margin, bottom - top + 2 * margin), paper)
    ImageDraw.Draw(img).text((margin - left, margin - top), text, font=f, fill=ink)
    return np.asarray(img)


def text_lines(n: int, seed: int = 0) -> list[TextLine]:
    """``n`` lines of words and numbers, in varied DejaVu fonts, sizes and grey levels, ready for PP-OCRv4 rec."""
    require("PIL", extra="zoo", feature="rendering text lines")
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        text = _line_text(rng)
        ink = int(rng.integers(0, 80))
        paper = int(rng.integers(190, 256))
        img = render_line(text, FONTS[int(rng.integers(len(FONTS)))], int(rng.integers(24, 44)),
                          ink=(ink,) * 3, paper=(paper,) * 3, margin=int(rng.integers(3, 10)))
        lines.append(TextLine(text, rec_preprocess(img)))
    return lines


def ppocr_decode(logits: np.ndarray, keys: Sequence[str] | None = None) -> list[str]:
    """CTC greedy decode of PP-OCRv4 rec's ``NxTxC`` output as rapidocr does: argmax per step, merge repeats,
    drop the blank (index 0); spaces at either end are dropped (the model reads the margin as a space)."""
    if keys is None:
        from .zoo import ppocr_keys

        keys = ppocr_keys()
    idx = np.asarray(logits).argmax(axis=2)
    texts = []
    for row in idx:
        keep = np.ones(len(row), bool)
        keep[1:] = row[1:] != row[:-1]
        keep &= row != 0
        texts.append("".join(keys[i] for i in row[keep]).strip())
    return texts


def text_scenes(n: int, size: int = 480, seed: int = 0) -> list[np.ndarray]:
    """``n`` ``size``×``size`` RGB uint8 images for text *detection*: a crop of a sample photo with 3–8 rendered
    lines pasted on it at random places (a detector's output on photos without text is all but zero)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pics = list(photos().values())
    out = []
    for i in range(n):
        canvas = _random_crop(pics[i % len(pics)], size, rng)
        for _ in range(int(rng.integers(3, 9))):
            line = render_line(_line_text(rng), FONTS[int(rng.integers(len(FONTS)))], int(rng.integers(14, 36)))
            lh, lw = line.shape[:2]
            if lw >= size or lh >= size:
                continue
            canvas.paste(Image.fromarray(line), (int(rng.integers(0, size - lw)), int(rng.integers(0, size - lh))))
        out.append(np.asarray(canvas))
    return out


def _random_crop(img: np.ndarray, size: int, rng: np.random.Generator):
    """A random square crop (half the short side or more) of ``img``, resized to ``size``×``size`` (a PIL image)."""
    from PIL import Image

    h, w = img.shape[:2]
    s = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
    y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
    return Image.fromarray(img[y:y + s, x:x + s]).resize((size, size), Image.BILINEAR)


def photo_crops(n: int, size: int = 224, seed: int = 0) -> list[np.ndarray]:
    """``n`` random square crops of the sample photos, ``size``×``size`` RGB uint8 (calibration images for CNNs)."""
    rng = np.random.default_rng(seed)
    pics = list(photos().values())
    return [np.asarray(_random_crop(pics[i % len(pics)], size, rng)) for i in range(n)]


def photos() -> dict[str, np.ndarray]:
    """scikit-image's colour sample photographs (``HxWx3`` uint8) by name."""
    data = require("skimage.data", extra="zoo", feature="the sample photos")
    out = {}
    for name in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry"):
        img = np.asarray(getattr(data, name)())
        if img.ndim == 3 and img.shape[2] == 3:
            out[name] = img.astype(np.uint8)
    return out


def sentences() -> list[tuple[str, str]]:
    """``(topic, sentence)`` pairs: 234 sentences on nine topics, written for bushu's embedding benchmarks."""
    return [(topic, s.strip()) for topic, block in _SENTENCES.items() for s in block.strip().splitlines()]


_SENTENCES = {
    "cooking": """
Simmer the tomato sauce for twenty minutes until it thickens.
Toast the cumin seeds in a dry pan before grinding them.
A pinch of salt brings out the sweetness of caramel.
Let the dough rest overnight in the refrigerator for a better crust.
Slice the onions thinly and cook them slowly until golden.
Fresh basil should be added at the very end of cooking.
The risotto needs constant stirring to release its starch.
Marinate the chicken in yogurt and spices for at least four hours.
Use a sharp knife so the tomatoes do not get crushed.
Bake the bread at a high temperature for the first ten minutes.
Whisk the egg whites until they form stiff peaks.
Brown butter gives cookies a nutty flavour.
Soak the dried beans in cold water the night before.
A cast iron skillet keeps its heat when you sear a steak.
Squeeze half a lemon over the fish just before serving.
Roasted vegetables taste best with a little olive oil and thyme.
The soup was too salty, so we added a peeled potato.
Knead the pasta dough until it is smooth and elastic.
Grate the cheese finely so that it melts evenly.
Chill the custard before pouring it over the berries.
Fry the garlic gently, because burnt garlic turns bitter.
Pickled cucumbers keep for weeks in a cool cellar.
The curry gets its colour from fresh turmeric root.
Fold the flour into the batter without overmixing it.
A splash of vinegar balances a rich stew.
Serve the dumplings with soy sauce and chilli oil.
""",
    "weather": """
Heavy rain is expected across the coast tomorrow morning.
The temperature dropped below freezing during the night.
A strong wind from the north made the ferry crossing rough.
The forecast promises sunshine for the whole weekend.
Thick fog delayed several flights at the airport.
Snow covered the mountain passes by early afternoon.
The humidity made the summer evening feel even hotter.
A thunderstorm knocked out power in the eastern districts.
The river rose after a week of continuous rain.
Farmers hope the drought will end before the harvest.
Clear skies tonight will make it easy to see the stars.
The hurricane weakened as it moved over cooler water.
Light drizzle continued for most of the day.
Frost damaged the early blossoms in the orchard.
A heat wave pushed temperatures past forty degrees.
The spring thaw turned the dirt roads into mud.
Hail the size of marbles dented cars in the car park.
Morning clouds will clear by midday in most regions.
The monsoon arrived two weeks later than usual.
Icy pavements caused many falls in the city centre.
Autumn winds scattered leaves across the square.
The weather station recorded its lowest pressure in a decade.
Sea breezes keep the island cool in the afternoon.
A rainbow appeared after the short shower.
Dry air and strong winds raised the risk of wildfires.
The lake froze solid for the first time in years.
""",
    "computing": """
The compiler reported an error on line forty two.
Restarting the server cleared the memory leak for a while.
The database query was slow because the index was missing.
We moved the service to containers to simplify deployment.
The new processor has more cores but a lower clock speed.
Caching the results reduced the response time by half.
The unit tests caught a bug in the date parsing code.
Encrypt the backups before copying them to the cloud.
The network switch dropped packets under heavy load.
A race condition appeared only when two threads wrote at once.
The web page loads faster after compressing the images.
Version control lets the team review every change.
The laptop battery lasts about eight hours of normal use.
Quantizing the model to eight bits made inference faster.
The garbage collector paused the program for a few milliseconds.
The application crashed when the configuration file was empty.
Profiling showed that most time was spent parsing JSON.
The operating system update changed the default firewall rules.
A neural network learns its weights from labelled examples.
The disk filled up because the logs were never rotated.
Two factor authentication protects accounts from stolen passwords.
The graphics card renders the scene at sixty frames per second.
The script downloads the data and trains a small classifier.
Memory bandwidth limits the speed of large matrix products.
The API returns an error code when the token has expired.
Static typing helps catch mistakes before the code runs.
""",
    "sports": """
The home team scored twice in the final ten minutes.
She ran the marathon in just under three hours.
The goalkeeper saved a penalty in the shootout.
Heavy rain stopped play at the cricket ground.
The cyclist climbed the mountain stage in record time.
Our basketball team lost by a single point.
The swimmer broke the national record in the relay.
Tennis fans waited hours for the final to begin.
The coach changed tactics at half time.
A late goal sent the club into the next round.
The referee showed a red card after the foul.
He trains every morning before going to work.
The skier fell on the last turn of the slalom.
Thousands of runners crossed the bridge at dawn.
The boxer won the title by a unanimous decision.
The rowing crew practised on the river all winter.
The stadium was full for the championship match.
She scored a hole in one on the seventh green.
The volleyball team celebrated its first league win.
An injury kept the striker out for the season.
The sailing race was cancelled because of the storm.
The young gymnast landed a perfect vault.
Fans sang the club anthem after the victory.
The chess champion defended her title for a third time.
The hockey game went to overtime.
The climbers reached the summit before noon.
""",
    "finance": """
The central bank raised interest rates by a quarter point.
Inflation slowed for the third month in a row.
The company reported higher profits than analysts expected.
Shares fell sharply after the earnings warning.
She opened a savings account for her daughter.
The mortgage payment goes up when rates rise.
Investors moved money into government bonds.
The startup raised ten million in its first funding round.
A weaker currency makes exports cheaper abroad.
The budget deficit grew because tax revenue fell.
Pay off high interest debt before investing.
The pension fund owns a large share of the company.
Oil prices jumped after the supply cut was announced.
The bank approved the loan after checking the credit history.
Retail sales rose strongly during the holiday season.
The merger created the largest insurer in the country.
Unemployment fell to its lowest level in a decade.
The invoice must be paid within thirty days.
Diversifying a portfolio reduces the risk of large losses.
The accountant found an error in the quarterly report.
Housing prices stopped rising in most cities.
The government announced new rules for cryptocurrency exchanges.
Small businesses struggled to get credit during the crisis.
The dividend was cut to preserve cash.
Consumer confidence improved after the election.
Exchange rates changed the cost of the imported parts.
""",
    "travel": """
The train to the coast leaves every hour from platform four.
We booked a small hotel near the old harbour.
Remember to check the passport expiry date before flying.
The museum is closed on Mondays.
A ferry connects the two islands in about forty minutes.
The hiking trail follows the river through the canyon.
Our luggage arrived a day after we did.
The guide showed us the cathedral and the market square.
Night buses run until five in the morning.
We rented bicycles to explore the countryside.
The view from the tower was worth the climb.
The border crossing took longer than expected.
A local family invited us to dinner.
The airport is forty minutes from the city centre by taxi.
We stayed in a cabin by the lake for a week.
Street food in the night market was cheap and delicious.
The castle ruins stand on a hill above the village.
Buy a travel card if you plan to use the metro often.
The cruise ship stopped at three ports along the coast.
We missed the last train and slept at the station.
The desert tour started before sunrise to avoid the heat.
Many shops close in the afternoon for a long lunch.
The campsite had hot showers and a small shop.
We crossed the mountains on a narrow winding road.
The old town is best explored on foot.
Pack light layers because evenings in the hills are cold.
""",
    "health": """
Regular exercise lowers the risk of heart disease.
Drink plenty of water when the weather is hot.
The doctor prescribed antibiotics for the infection.
Getting enough sleep helps the body recover.
A balanced diet includes vegetables, grains and protein.
The vaccine protects against several strains of the virus.
Stretching before running can prevent injuries.
Washing hands often stops germs from spreading.
The nurse measured his blood pressure twice.
Too much sugar increases the risk of diabetes.
Physical therapy helped her walk again after surgery.
Stress can cause headaches and trouble sleeping.
The clinic offers free eye tests for children.
Smoking damages the lungs and the heart.
A short walk after meals helps control blood sugar.
The patient recovered quickly after the operation.
Wear sunscreen to protect the skin from burns.
Allergies are worse in spring when pollen counts are high.
The dentist recommended brushing twice a day.
Meditation can lower anxiety for some people.
The hospital opened a new wing for cancer treatment.
Vitamin D is produced when skin is exposed to sunlight.
Elderly people are more vulnerable to the flu.
A broken wrist usually heals in about six weeks.
Loud music can damage hearing over time.
The study followed ten thousand adults for twenty years.
""",
    "nature": """
Bees carry pollen from flower to flower.
The oak tree in the park is over three hundred years old.
Whales migrate thousands of kilometres each year.
Moss grows on the shaded north side of the rocks.
The forest floor was covered with fallen leaves.
Wolves returned to the valley after a century.
Coral reefs are threatened by warming oceans.
The owl hunts mice in the fields at night.
Salmon swim upstream to lay their eggs.
The volcano erupted and covered the village in ash.
Frogs sing loudly in the pond after rain.
The glacier has retreated a kilometre since 1950.
Squirrels bury nuts to eat during the winter.
The desert blooms briefly after a rare rainfall.
Butterflies gather on the wet sand by the river.
The tide goes out twice a day on this beach.
Migrating geese fly south in a long V shape.
Mushrooms appeared overnight after the rain.
The cliff is home to thousands of nesting seabirds.
Elephants travel long distances to find water.
Lichens can survive on bare rock in the Arctic.
The waterfall is loudest in early spring.
Deer graze at the edge of the forest at dusk.
Earthworms improve the soil by mixing it.
The rainforest holds more species than any other habitat.
Sea turtles return to the beach where they hatched.
""",
    "history": """
The city walls were built in the thirteenth century.
The printing press changed how knowledge spread.
Ancient traders crossed the desert with camel caravans.
The treaty ended a war that had lasted thirty years.
The pyramids were built without iron tools.
The first railway opened between two industrial towns.
Explorers mapped the coastline using the stars.
The empire collapsed after years of civil war.
Women won the right to vote after a long campaign.
The old manuscript was found in a monastery library.
The steam engine powered the first factories.
The bridge was destroyed during the war and rebuilt later.
Archaeologists found coins from the Roman period.
The king signed a charter that limited his power.
The plague killed a third of the population.
The canal linked the two seas and shortened the voyage.
Medieval farmers rotated their crops to keep the soil fertile.
The telegraph carried news across the ocean in minutes.
The revolution began with protests over the price of bread.
The library of the ancient city held thousands of scrolls.
The castle was besieged for six months.
The first moon landing was watched by millions on television.
Silk was traded along routes that crossed Asia.
The wall that divided the city fell in a single night.
Early astronomers recorded eclipses on clay tablets.
The cathedral took more than a century to complete.
""",
}
