"""Topic vocabularies for the synthetic catalog.

Each topic has sub-categories, title words and description themes chosen so
that a language model can tell topics apart from the text alone; that is what
lets a text-aware recommender place brand-new items correctly.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Topic:
    name: str
    subcategories: tuple[str, ...]
    adjectives: tuple[str, ...]
    nouns: tuple[str, ...]
    formats: tuple[str, ...]
    themes: tuple[str, ...]
    price: float
    """Typical price in the shop's currency (prices are log-normal around it)."""


TOPICS: tuple[Topic, ...] = (
    Topic("Science Fiction", ("Space Opera", "Cyberpunk", "Time Travel"),
          ("Distant", "Silent", "Quantum", "Orbital", "Neon", "Last"),
          ("Star", "Galaxy", "Colony", "Android", "Starship", "Nebula", "Frontier"),
          ("novel", "film", "audiobook"),
          ("interstellar war", "first contact with aliens", "rogue artificial intelligence",
           "a derelict starship", "life on a Mars colony", "paradoxes of time travel"), 14.0),
    Topic("Cooking", ("Baking", "Vegetarian", "Italian Cuisine"),
          ("Rustic", "Golden", "Simple", "Crispy", "Homemade", "Sunday"),
          ("Kitchen", "Bread", "Pasta", "Oven", "Harvest", "Table", "Spice"),
          ("cookbook", "cooking course", "recipe collection"),
          ("sourdough bread baking", "fresh pasta from scratch", "seasonal vegetable dishes",
           "slow-cooked family meals", "pastry and desserts", "herbs and spices"), 25.0),
    Topic("Running", ("Marathon", "Trail Running", "Sprinting"),
          ("Fast", "Endless", "Steady", "Mountain", "Light", "Brave"),
          ("Miles", "Stride", "Trail", "Finish Line", "Pace", "Summit"),
          ("training plan", "running shoe", "guide"),
          ("marathon training", "trail running in the mountains", "injury prevention for runners",
           "interval workouts", "running nutrition", "cushioned shoes for long distances"), 60.0),
    Topic("Jazz", ("Bebop", "Smooth Jazz", "Big Band"),
          ("Blue", "Midnight", "Smoky", "Swinging", "Velvet", "Late"),
          ("Saxophone", "Trumpet", "Session", "Groove", "Quartet", "Standards"),
          ("album", "live recording", "vinyl record"),
          ("improvised saxophone solos", "a late-night club session", "swing rhythms",
           "modal jazz harmony", "a trumpet and piano duet", "big band arrangements"), 12.0),
    Topic("Gardening", ("Vegetable Garden", "Houseplants", "Flowers"),
          ("Green", "Blooming", "Wild", "Secret", "Urban", "Patient"),
          ("Garden", "Seeds", "Roses", "Soil", "Greenhouse", "Orchard"),
          ("handbook", "seed kit", "planter"),
          ("growing tomatoes", "composting", "caring for houseplants", "planting spring bulbs",
           "pruning fruit trees", "organic pest control"), 20.0),
    Topic("Photography", ("Landscape", "Portrait", "Street Photography"),
          ("Sharp", "Wide", "Analog", "Golden Hour", "Candid", "Framed"),
          ("Lens", "Shutter", "Exposure", "Light", "Camera", "Frame"),
          ("camera lens", "photography course", "photo book"),
          ("shooting landscapes at golden hour", "portrait lighting", "street photography",
           "manual exposure", "prime lenses", "editing raw photos"), 180.0),
    Topic("History", ("Ancient Rome", "World War II", "Medieval Europe"),
          ("Fallen", "Iron", "Forgotten", "Imperial", "Crowned", "Lost"),
          ("Empire", "Kingdom", "Legion", "Crown", "Siege", "Dynasty"),
          ("history book", "documentary", "biography"),
          ("the fall of the Roman Empire", "medieval castles and kings", "the Second World War",
           "ancient Egyptian pharaohs", "the age of exploration", "revolutions in Europe"), 22.0),
    Topic("Fantasy", ("Epic Fantasy", "Fairy Tales", "Dragons"),
          ("Enchanted", "Shadow", "Ancient", "Cursed", "Silver", "Hidden"),
          ("Dragon", "Sword", "Wizard", "Throne", "Forest", "Quest", "Spell"),
          ("novel", "film", "board game"),
          ("a young wizard's quest", "dragons and ancient magic", "an enchanted forest",
           "a cursed kingdom", "elves and dwarves at war", "a stolen magic sword"), 16.0),
    Topic("Fitness", ("Yoga", "Strength Training", "Pilates"),
          ("Strong", "Flexible", "Daily", "Core", "Balanced", "Power"),
          ("Workout", "Yoga Mat", "Dumbbells", "Routine", "Stretch", "Kettlebell"),
          ("workout program", "yoga mat", "fitness tracker"),
          ("morning yoga flows", "building muscle with weights", "core strength",
           "stretching and mobility", "home workouts without equipment", "high intensity training"), 40.0),
    Topic("Travel", ("Backpacking", "City Breaks", "Road Trips"),
          ("Faraway", "Coastal", "Hidden", "Northern", "Sunny", "Wandering"),
          ("Journey", "Island", "Coast", "Road", "Passport", "Voyage"),
          ("travel guide", "backpack", "travel documentary"),
          ("backpacking across Asia", "weekend city breaks in Europe", "road trips along the coast",
           "hiking in national parks", "island hopping", "budget travel tips"), 35.0),
    Topic("Programming", ("Python", "Web Development", "Machine Learning"),
          ("Clean", "Practical", "Modern", "Effective", "Fluent", "Scalable"),
          ("Code", "Algorithms", "Python", "Systems", "Data", "Compiler"),
          ("programming book", "online course", "video tutorial"),
          ("writing clean Python code", "building web applications", "machine learning with neural networks",
           "algorithms and data structures", "databases and SQL", "testing software"), 45.0),
    Topic("Kids", ("Picture Books", "Toys", "Animated Films"),
          ("Happy", "Little", "Sleepy", "Funny", "Tiny", "Brave"),
          ("Bear", "Bunny", "Puppy", "Teddy", "Balloon", "Rainbow"),
          ("picture book", "toy", "animated film"),
          ("a bedtime story about a sleepy bear", "learning colors and numbers", "a friendly puppy's adventure",
           "building blocks", "a funny cartoon family", "songs for toddlers"), 15.0),
)  # fmt: skip
