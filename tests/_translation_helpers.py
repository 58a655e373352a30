"""Sentence pairs shared by the translation tests."""

PAIRS = [
    ("Das Haus ist groß.", "The house is big."),
    ("Der Hund schläft im Garten.", "The dog sleeps in the garden."),
    ("Ich trinke gern Kaffee am Morgen.", "I like to drink coffee in the morning."),
    ("Wir fahren morgen nach Berlin.", "We are going to Berlin tomorrow."),
    ("Sie liest ein spannendes Buch.", "She is reading an exciting book."),
    ("Das Wetter ist heute schön.", "The weather is nice today."),
]
